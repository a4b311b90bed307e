"""The one mapping from a parameter (or module) name to its layer group.

Groups: ``attn_q attn_k attn_v attn_o attn_qkv mlp_in mlp_out embedding head other``
(``attn_qkv`` is a fused query/key/value projection such as GPT-2's ``c_attn``). The mapping is
a table of regular expressions over the *module path* — the name with PEFT/DDP/compile wrapping
and the ``.weight``/``.bias`` suffix removed — tried in order, first match wins. It covers the
in-house GPT and ViT names, PEFT-wrapped names, and the common HF families (BERT/RoBERTa/ViT,
Llama/Qwen/Mistral/SmolLM, GPT-2, T5, BART, CLIP, DistilBERT, GPT-NeoX/Falcon, timm).
"""

from __future__ import annotations

import re

GROUPS = ("attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv", "mlp_in", "mlp_out", "embedding",
          "head", "other")

# Parent-module names that mark an attention block or an MLP block; a bare leaf such as `q` or
# `wo` only counts under one of them (T5 uses `wo` in the MLP, Llama-style `wo` in attention).
_ATTN = r"(attn|attention|self_attn|self_attention|self|SelfAttention|EncDecAttention|" \
        r"encoder_attn|cross_attn|crossattention|mixer)"
_MLP = r"(mlp|ffn|feed_forward|DenseReluDense|intermediate|ff)"

_TABLE: tuple[tuple[str, str], ...] = (
    # Norms first: a LayerNorm inside `embeddings` or `attention` is neither.
    (r"(^|\.)((?i:\w*norm\w*)|ln_\w+|ln\d*)$", "other"),
    # Heads and classifiers anywhere in the path (RoBERTa's `classifier.out_proj` is a head).
    (r"(^|\.)(head|lm_head|classifier|score|cls|output_layer|pooler_head)(\.|$)", "head"),
    (r"(^|\.)(embed|embeddings?|wte|wpe|word_embeddings|embed_tokens|embed_positions|"
     r"position_embeddings?|token_type_embeddings|patch_embed|patch_embeddings|patch_embedding|"
     r"shared|cls_token|pos_embed|class_embedding)(\.|$)", "embedding"),
    # Fused projections (GPT-2 c_attn, timm qkv, NeoX query_key_value, nn.MultiheadAttention).
    (r"(^|\.)(c_attn|qkv|query_key_value|Wqkv|qkv_proj|in_proj|in_proj_weight)$", "attn_qkv"),
    (rf"(^|\.){_ATTN}\.(q|wq)$|(^|\.)(q_proj|query|query_proj|q_lin)$", "attn_q"),
    (rf"(^|\.){_ATTN}\.(k|wk)$|(^|\.)(k_proj|key|key_proj|k_lin)$", "attn_k"),
    (rf"(^|\.){_ATTN}\.(v|wv)$|(^|\.)(v_proj|value|value_proj|v_lin)$", "attn_v"),
    (rf"(^|\.){_ATTN}\.(o|wo|c_proj|dense|proj|out)$|(^|\.)(o_proj|out_proj|out_lin)$|"
     r"(^|\.)attention\.output\.dense$", "attn_o"),
    (rf"(^|\.){_MLP}\.(fc_in|fc1|c_fc|up_proj|gate_proj|gate_up_proj|w1|w3|wi|wi_0|wi_1|"
     r"dense_h_to_4h|lin1|dense)$|(^|\.)(fc_in|fc1|c_fc|up_proj|gate_proj|gate_up_proj|"
     r"dense_h_to_4h|lin1)$", "mlp_in"),
    (rf"(^|\.){_MLP}\.(fc_out|fc2|c_proj|down_proj|w2|wo|dense_4h_to_h|lin2)$|"
     r"(^|\.)(fc_out|fc2|down_proj|dense_4h_to_h|lin2)$|(^|\.)output\.dense$", "mlp_out"),
)
_RULES = tuple((re.compile(p), g) for p, g in _TABLE)

# PEFT inserts these between the wrapped module and its parameter; DDP/compile add prefixes.
_WRAPPER_PREFIX = re.compile(r"^(base_model\.model\.|module\.|_orig_mod\.)+")
_PEFT_INFIX = re.compile(
    r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|lora_dropout|"
    r"modules_to_save)(\.[^.]+)?(?=\.|$)|\.(base_layer|original_module)(?=\.|$)"
)


def module_path(param_name: str) -> str:
    """The owning module's path of a parameter, without PEFT/DDP/compile wrapping.

    ``base_model.model.blocks.0.attn.q.lora_A.default.weight`` → ``blocks.0.attn.q``.
    """
    name = _WRAPPER_PREFIX.sub("", param_name).replace("._orig_mod.", ".")
    name = re.sub(r"\.(weight|bias)$", "", name)
    return _PEFT_INFIX.sub("", name)


def layer_group(name: str) -> str:
    """The layer group (one of :data:`GROUPS`) of a parameter or module name.

    This is the project's single name → group mapping; diagnostics group by it and the LoRA
    default targets are the linears it puts in an ``attn_*`` or ``mlp_*`` group.
    """
    path = module_path(name)
    for pattern, group in _RULES:
        if pattern.search(path):
            return group
    return "other"
