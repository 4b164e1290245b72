"""Producing scored samples: rollout engines (`engines`), the generate → decode loop (`generate`) and the
decode/score overlap (`pipeline`)."""
