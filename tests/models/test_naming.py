import pytest

from muonft.models.naming import GROUPS, layer_group, module_path

TABLE = [
    # muonft GPT and ViT
    ("blocks.3.attn.q.weight", "attn_q"), ("blocks.0.attn.k.weight", "attn_k"),
    ("blocks.0.attn.v.weight", "attn_v"), ("blocks.0.attn.o.weight", "attn_o"),
    ("blocks.1.mlp.fc_in.weight", "mlp_in"), ("blocks.1.mlp.fc_out.weight", "mlp_out"),
    ("embed.weight", "embedding"), ("head.weight", "head"), ("head.bias", "head"),
    ("patch_embed.proj.weight", "embedding"), ("cls_token", "embedding"),
    ("pos_embed", "embedding"), ("blocks.0.norm1.weight", "other"), ("norm.weight", "other"),
    # PEFT-wrapped, DDP, torch.compile
    ("base_model.model.blocks.0.attn.v.lora_A.default.weight", "attn_v"),
    ("base_model.model.blocks.0.attn.k.base_layer.weight", "attn_k"),
    ("blocks.0.mlp.fc_out.lora_B.default.weight", "mlp_out"),
    ("blocks.0.attn.q.lora_magnitude_vector.default.weight", "attn_q"),
    ("module._orig_mod.blocks.2.attn.o.weight", "attn_o"),
    ("base_model.model.classifier.modules_to_save.default.weight", "head"),
    # BERT / RoBERTa / HF ViT
    ("bert.encoder.layer.0.attention.self.query.weight", "attn_q"),
    ("bert.encoder.layer.0.attention.self.key.weight", "attn_k"),
    ("bert.encoder.layer.0.attention.self.value.bias", "attn_v"),
    ("bert.encoder.layer.0.attention.output.dense.weight", "attn_o"),
    ("bert.encoder.layer.0.attention.output.LayerNorm.weight", "other"),
    ("bert.encoder.layer.0.intermediate.dense.weight", "mlp_in"),
    ("bert.encoder.layer.0.output.dense.weight", "mlp_out"),
    ("bert.embeddings.word_embeddings.weight", "embedding"),
    ("bert.embeddings.LayerNorm.weight", "other"), ("classifier.weight", "head"),
    ("roberta.encoder.layer.0.attention.self.query.weight", "attn_q"),
    ("classifier.out_proj.weight", "head"), ("cls.predictions.decoder.weight", "head"),
    ("vit.embeddings.patch_embeddings.projection.weight", "embedding"),
    ("vit.encoder.layer.0.attention.attention.query.weight", "attn_q"),
    # Llama / Qwen / SmolLM / Mistral
    ("model.layers.0.self_attn.q_proj.weight", "attn_q"),
    ("model.layers.0.self_attn.k_proj.weight", "attn_k"),
    ("model.layers.0.self_attn.v_proj.weight", "attn_v"),
    ("model.layers.0.self_attn.o_proj.weight", "attn_o"),
    ("model.layers.0.self_attn.q_norm.weight", "other"),
    ("model.layers.0.mlp.gate_proj.weight", "mlp_in"),
    ("model.layers.0.mlp.up_proj.weight", "mlp_in"),
    ("model.layers.0.mlp.down_proj.weight", "mlp_out"),
    ("model.embed_tokens.weight", "embedding"), ("lm_head.weight", "head"),
    ("model.norm.weight", "other"), ("score.weight", "head"),
    # GPT-2
    ("transformer.h.0.attn.c_attn.weight", "attn_qkv"),
    ("transformer.h.0.attn.c_proj.weight", "attn_o"),
    ("transformer.h.0.mlp.c_fc.weight", "mlp_in"), ("transformer.h.0.mlp.c_proj.weight", "mlp_out"),
    ("transformer.wte.weight", "embedding"), ("transformer.wpe.weight", "embedding"),
    ("transformer.ln_f.weight", "other"),
    # T5
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "attn_q"),
    ("encoder.block.0.layer.0.SelfAttention.k.weight", "attn_k"),
    ("decoder.block.0.layer.1.EncDecAttention.v.weight", "attn_v"),
    ("encoder.block.0.layer.0.SelfAttention.o.weight", "attn_o"),
    ("encoder.block.0.layer.1.DenseReluDense.wi.weight", "mlp_in"),
    ("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", "mlp_in"),
    ("encoder.block.0.layer.1.DenseReluDense.wo.weight", "mlp_out"),
    ("shared.weight", "embedding"),
    # CLIP / BART / DistilBERT / NeoX / timm / nn.MultiheadAttention
    ("vision_model.encoder.layers.0.self_attn.q_proj.weight", "attn_q"),
    ("vision_model.encoder.layers.0.self_attn.out_proj.weight", "attn_o"),
    ("vision_model.encoder.layers.0.mlp.fc1.weight", "mlp_in"),
    ("vision_model.encoder.layers.0.mlp.fc2.weight", "mlp_out"),
    ("vision_model.embeddings.patch_embedding.weight", "embedding"),
    ("vision_model.embeddings.position_embedding.weight", "embedding"),
    ("vision_model.pre_layrnorm.weight", "other"),
    ("model.decoder.layers.0.encoder_attn.k_proj.weight", "attn_k"),
    ("distilbert.transformer.layer.0.attention.q_lin.weight", "attn_q"),
    ("distilbert.transformer.layer.0.attention.out_lin.weight", "attn_o"),
    ("distilbert.transformer.layer.0.ffn.lin1.weight", "mlp_in"),
    ("distilbert.transformer.layer.0.ffn.lin2.weight", "mlp_out"),
    ("gpt_neox.layers.0.attention.query_key_value.weight", "attn_qkv"),
    ("gpt_neox.layers.0.attention.dense.weight", "attn_o"),
    ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "mlp_in"),
    ("gpt_neox.layers.0.mlp.dense_4h_to_h.weight", "mlp_out"),
    ("blocks.0.attn.qkv.weight", "attn_qkv"), ("blocks.0.attn.proj.weight", "attn_o"),
    ("layers.0.self_attn.in_proj_weight", "attn_qkv"),
    ("something.else.weight", "other"), ("q.weight", "other"),
]


@pytest.mark.parametrize(("name", "group"), TABLE)
def test_layer_group_table(name, group):
    assert layer_group(name) == group
    assert group in GROUPS


def test_module_path_strips_wrapping():
    assert module_path("base_model.model.blocks.0.attn.q.lora_A.default.weight") == \
        "blocks.0.attn.q"
    assert module_path("blocks.0.attn.q.base_layer.weight") == "blocks.0.attn.q"
    assert module_path("embed.lora_embedding_A.default") == "embed"
    assert module_path("blocks.0.attn.q") == "blocks.0.attn.q"
