"""The torch-free, HTTP-free part of ``app`` that ``training`` uses too, so that export, evaluation and
serving run the same code: the repository format, the tokenizer, sampling, seq2seq search and the
KV cache with its reference decoder. Nothing here imports the rest of ``app`` (import-linter checks)."""
