import pytest

from blip3o_rl.rl.data import PromptFileError, PromptRow, PromptSampler, load_prompts


def test_jsonl_rows_keep_metadata(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a cat", "tag": "single_object"}\n\n{"prompt": "two dogs"}\n')
    rows = load_prompts(p)
    assert rows == [PromptRow("a cat", {"tag": "single_object"}), PromptRow("two dogs", {})]


def test_text_files_one_prompt_per_line(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text('a sign saying "hello"\n\nanother\n')
    assert [r.prompt for r in load_prompts(p)] == ['a sign saying "hello"', "another"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"prompt": "ok"}\n{"prompt": 3}\n', r"p\.jsonl:2: field 'prompt' must be a non-empty string, got 3"),
        ('{"prompt": "ok"}\n{"prompt": "x",\n', r"p\.jsonl:2: invalid JSON"),
        ('["a"]\n', r"p\.jsonl:1: expected a JSON object"),
        ('{"text": "x"}\n', r"p\.jsonl:1: field 'prompt'"),
        ("\n\n", r"no prompts"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, content, match):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    with pytest.raises(PromptFileError, match=match):
        load_prompts(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")


def _rows(n):
    return [PromptRow(str(i), {}) for i in range(n)]


def test_sampler_covers_each_epoch_and_resumes_exactly():
    s = PromptSampler(_rows(10), 4, seed=0)
    first = [r.prompt for _ in range(5) for r in s.next_batch()]  # 20 = two epochs
    assert sorted(first[:10]) == sorted(map(str, range(10)))
    assert sorted(first[10:20]) == sorted(map(str, range(10)))
    s2 = PromptSampler(_rows(10), 4, seed=0)
    for _ in range(3):
        s2.next_batch()
    state = s2.state_dict()
    s3 = PromptSampler(_rows(10), 4, seed=0)
    s3.load_state_dict(state)
    assert [r.prompt for r in s3.next_batch()] == [r.prompt for r in s2.next_batch()]


def test_ranks_take_disjoint_slices():
    a = PromptSampler(_rows(16), 8, seed=1, mine=range(0, 4)).next_batch()
    b = PromptSampler(_rows(16), 8, seed=1, mine=range(4, 8)).next_batch()
    assert not {r.prompt for r in a} & {r.prompt for r in b}
    whole = PromptSampler(_rows(16), 8, seed=1).next_batch()  # one process: the concatenation, in rank order
    assert whole == a + b


def test_ranks_of_a_split_group_share_its_prompt_and_advance_alike():
    """G=4, B=2, W=4 (rl/batch_layout.py): ranks 0, 1 hold global prompt 0, ranks 2, 3 prompt 1."""
    from blip3o_rl.rl.batch_layout import BatchLayout

    layouts = [BatchLayout(2, 4, 4, r) for r in range(4)]
    samplers = [PromptSampler(_rows(5), lay.prompts_per_step, seed=3, mine=lay.prompts) for lay in layouts]
    one = PromptSampler(_rows(5), 2, seed=3)  # one process with batch 8: the same 2 prompts per step
    for _ in range(4):  # past an epoch boundary (5 prompts, 2 per step)
        got = [s.next_batch() for s in samplers]
        ref = one.next_batch()
        assert got[0] == got[1] == ref[:1] and got[2] == got[3] == ref[1:]
    assert all(s.state_dict() == one.state_dict() for s in samplers)  # resume state: global, rank-independent
    with pytest.raises(ValueError, match="not among the step's 2"):
        PromptSampler(_rows(5), 2, seed=3, mine=range(1, 3))
