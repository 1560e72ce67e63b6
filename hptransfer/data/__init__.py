"""Token data: corpora (the built-in one, text files, nanoGPT .bin files) and tokenizers."""
