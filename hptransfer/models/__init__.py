"""Model families: what hptransfer parametrizes, trains and tunes.

- :mod:`~hptransfer.models.family`: the seam (:class:`ModelFamily`), the built-in family,
  the role table of a spec's model, building a model;
- :mod:`~hptransfer.models.transformer`: hptransfer's own transformer;
- :mod:`~hptransfer.models.hf`: Hugging Face Llama and GPT-2 from a config;
- :mod:`~hptransfer.models.factory`: your own ``nn.Module`` from a factory function.

docs/models.md shows how to bring your own model.
"""
