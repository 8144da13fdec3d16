"""Decoding: sampling controls, logits processors, the feed policy and its one loop, prompts,
``generate`` / ``generate_stream`` / ``beam_search``.

- ``sampling``: temperature, top-k, top-p, greedy and the draw: pure functions of head outputs.
- ``processors``: penalties, bias, bans, min-new-tokens, stop sequences, a user function.
- ``feed``: the one free-running loop (truth or sample per row and step).
- ``prompts``: argument checks and the prompt prefill shared by every decoding program.
- ``generate``, ``beam``: the decoding programs.

May import: ``seqmodel.nn`` and below (configs, errors); not data, training or forecasting.
"""
