"""Pinned commits of the rewards' default Hugging Face hub models, so a default never changes under a run.

`hub_revision(source)` is the commit to load for a hub id (None for a local folder or an id without a
pin: pass your own folder or id for those). Each commit was checked against public references of that
repository's snapshots (the one with the safetensors weights the rewards load).

Not pinned: ``facebook/mask2former-swin-small-coco-instance`` (GenEval's default detector), whose
commit could not be verified from here (no hub access); give ``detector=`` a local folder to fix it.
"""

from __future__ import annotations

from pathlib import Path

PINNED_REVISIONS: dict[str, str] = {
    "openai/clip-vit-large-patch14": "32bd64288804d66eefd0ccbe215aa642df71cc41",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "1c2b8495b28150b8a4922ee1c8edee224c284c0c",
    "yuvalkirstain/PickScore_v1": "a4e4367c6dfa7288a00c550414478f865b875800",
}


def hub_revision(source: str) -> str | None:
    """The pinned commit of hub id ``source``; None for a local folder or an id without a pin."""
    if Path(source).expanduser().exists():
        return None
    return PINNED_REVISIONS.get(source)


def revision_kwargs(source: str) -> dict[str, str]:
    """``{"revision": commit}`` for a pinned hub id, else ``{}`` (``from_pretrained``'s own default)."""
    revision = hub_revision(source)
    return {} if revision is None else {"revision": revision}
