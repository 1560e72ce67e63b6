"""Hugging Face ``transformers`` causal LMs as model families: ``hf-llama`` and ``hf-gpt2``.

Each is built from a config (random init, nothing downloaded): width = ``hidden_size``,
heads = width / head_dim, MLP = ``mlp_ratio`` × width, depth = layers, context =
``seq_len``, the vocabulary of the spec; embeddings untied (µP gives the embedding and the
readout different rules: docs/spec.md §9); dropout off and no KV cache (proxies train).
Roles are inferred from shapes (:mod:`hptransfer.mup.sources`): GPT-2's ``Conv1D`` stores
its weight (fan_in, fan_out), which the inference reads from the module type. The spec's
attention scale (1/√D by default, 1/D under the ``lingle`` preset) is applied by setting
every attention module's ``scaling`` (which Hugging Face passes to each attention
backend); a model whose attention has no ``scaling`` is refused rather than trained at
another scale without saying so.

``pip install "hptransfer[hf]"`` installs ``transformers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hptransfer.errors import ConfigError
from hptransfer.models.family import ModelFamily
from hptransfer.mup.rules import attention_scale
from hptransfer.spec import Compilation, DepthRule, KeyValueHeads, ModelSpec, Precision

if TYPE_CHECKING:
    from torch import nn

    from hptransfer.mup.roles import RoleTable

__all__ = ["GPT2Family", "HF_INSTALL", "LlamaFamily", "hf_family"]

HF_INSTALL = 'pip install "hptransfer[hf]"'


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"Hugging Face models need the transformers package: "
                          f"{HF_INSTALL}") from None
    transformers.logging.set_verbosity_error()  # config notes would drown hptransfer's output
    return transformers


class _HFFamily(ModelFamily):
    """What the Hugging Face families share: config → model, attention scale, FLOPs."""

    def config(self, spec: ModelSpec):
        raise NotImplementedError

    def layers(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def check(self, spec: ModelSpec) -> None:
        super().check(spec)
        if spec.depth_rule is not DepthRule.NONE:
            raise ConfigError(f"--depth-rule {spec.depth_rule.value} scales residual branches, "
                              f"which the {self.name} model cannot do without a patch: use "
                              f"--depth-rule none (depth then does not transfer), or the "
                              f"built-in model")

    def make(self, spec: ModelSpec) -> nn.Module:
        model = self.model_class()(self.config(spec))
        return model

    def model_class(self):
        raise NotImplementedError

    def _attention(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if type(m).__name__.endswith("Attention")]

    def configure(self, model: nn.Module, spec: ModelSpec) -> None:
        modules = self._attention(model)
        if len(modules) != spec.depth or not all(hasattr(m, "scaling") for m in modules):
            raise ConfigError(
                f"cannot set the attention scale of this {self.name} model: expected "
                f"{spec.depth} attention modules with a `scaling` attribute, found "
                f"{sum(hasattr(m, 'scaling') for m in modules)} (a transformers version whose "
                f"attention keeps its scale elsewhere); the spec asks for "
                f"{spec.attention_scale.value}, so the run is refused")
        scale = attention_scale(spec)
        for module in modules:
            module.scaling = scale

    def parallelize(self, model: nn.Module, mesh, *, precision: Precision = Precision.FP32,
                    compilation: Compilation = Compilation.EAGER) -> None:
        """FSDP2 units: each decoder layer (:meth:`layers`; compiled one by one when
        ``compilation`` says so), then the root (embeddings, final norm, LM head)."""
        from hptransfer.models.sharding import shard_blocks

        shard_blocks(model, mesh, blocks=self.layers(model), precision=precision,
                     compilation=compilation)

    def flops_per_token(self, spec: ModelSpec) -> float:
        """3 × (2 × matrix parameters + 2·2·L·T·H·D of q·kᵀ and attention·v), as for the
        built-in model (the readout counts, the embedding lookups do not)."""
        from hptransfer.models.family import table_of
        from hptransfer.mup.roles import Role

        matrices = sum(row.shape[0] * row.shape[1] for row in table_of(self, spec)
                       if row.role in (Role.HIDDEN, Role.READOUT))
        attention = 2 * 2 * spec.depth * spec.seq_len * spec.heads * spec.head_dim
        return 3.0 * (2.0 * matrices + attention)

    def probes(self, model: nn.Module, roles: RoleTable) -> dict[str, list[nn.Module]]:
        layers = self.layers(model)
        return {"embedding": [model.get_input_embeddings()],
                "attention": self._attention(model),
                "mlp": [layer.mlp for layer in layers], "block": layers,
                "logits": [model.get_output_embeddings()]}

    def describe(self) -> dict:
        return {"family": self.name, "transformers": _transformers().__version__}


class LlamaFamily(_HFFamily):
    """``LlamaForCausalLM``: RMSNorm with gains, RoPE, SwiGLU MLP (intermediate size
    ``mlp_ratio`` × width), multi-head, grouped-query (``kv_heads grouped``, k/v heads =
    heads / ``kv_group``) or multi-query attention."""

    name = "hf-llama"

    def model_class(self):
        return _transformers().LlamaForCausalLM

    def config(self, spec: ModelSpec):
        return _transformers().LlamaConfig(
            vocab_size=spec.vocab, hidden_size=spec.width,
            intermediate_size=spec.mlp_ratio * spec.width, num_hidden_layers=spec.depth,
            num_attention_heads=spec.heads, num_key_value_heads=spec.kv_head_count,
            head_dim=spec.head_dim, max_position_embeddings=spec.seq_len,
            rms_norm_eps=1e-6, tie_word_embeddings=False, use_cache=False,
            attention_bias=False, mlp_bias=False, attention_dropout=0.0,
            bos_token_id=0, eos_token_id=0, pad_token_id=None)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.model.layers)


class GPT2Family(_HFFamily):
    """``GPT2LMHeadModel``: LayerNorm with gains and biases, learned positions, GELU MLP
    (``mlp_ratio`` × width), multi-head attention, untied embeddings."""

    name = "hf-gpt2"

    def check(self, spec: ModelSpec) -> None:
        super().check(spec)
        if spec.kv_heads is not KeyValueHeads.MULTI_HEAD:
            raise ConfigError(f"GPT-2 attention is multi-head only; --kv-heads "
                              f"{spec.kv_heads.value} needs --model hf-llama or builtin")

    def model_class(self):
        return _transformers().GPT2LMHeadModel

    def config(self, spec: ModelSpec):
        # bos/eos default to 50256, outside a byte vocabulary: set them inside it
        return _transformers().GPT2Config(
            vocab_size=spec.vocab, n_embd=spec.width, n_layer=spec.depth, n_head=spec.heads,
            n_inner=spec.mlp_ratio * spec.width, n_positions=spec.seq_len,
            tie_word_embeddings=False, use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.transformer.h)


_FAMILIES = {LlamaFamily.name: LlamaFamily, GPT2Family.name: GPT2Family}


def hf_family(name: str) -> ModelFamily:
    """The Hugging Face family ``name`` (``hf-llama``, ``hf-gpt2``)."""
    if name not in _FAMILIES:
        raise ConfigError(f"no Hugging Face model family {name!r}: hptransfer ships "
                          f"{', '.join(_FAMILIES)} (or bring your own with --model "
                          f"path/to/file.py:make_model)")
    return _FAMILIES[name]()
