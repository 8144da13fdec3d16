"""Decoding: sampling controls, logits processors, the feed policy and its one loop, prompts,
``generate`` / ``generate_stream`` / ``beam_search``.

- ``sampling``: temperature, top-k, top-p, greedy and the draw: pure functions of head outputs.
- ``processors``: penalties, bias, bans, min-new-tokens, stop sequences, a user function; the
  caller's settings travel as one ``ProcessorOptions``.
- ``constraints``: regular expressions and JSON schemas as automata over the tokenizer (a dense
  ``(states, V)`` table; the state is one int32 per row in the loop's carry).
- ``feed``: the one free-running loop (truth or sample per row and step) and why rows stop.
- ``prompts``: argument checks and the prompt prefill shared by every decoding program.
- ``requests``: the checked arguments of ``generate`` (static options, traced values).
- ``generate``, ``beam``: the decoding programs.

May import: ``seqmodel.nn`` and below (configs, errors); not data, training or forecasting.
"""
