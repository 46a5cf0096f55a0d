"""QLoRA on hfq models with peft's public API: prepare_model_for_kbit_training + get_peft_model, Trainer, adapter
save/reload, merge_and_unload's error and its documented fix. The reference is peft's own LoRA on the dequantized
float model (nn.Linear, torch's autograd) with the same adapter init."""

import pytest
import torch
from helpers import KERNEL_LOGIT_TOL, assert_logits_close
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import hfq
from hfq.lora import HfqLoraLinear
from hfq.nn import HfqLinear

CONFIGS = {
    "nf4": dict(method="nf4"),
    "nf4-dq": dict(method="nf4", double_quant=True),
    "fp4-dq": dict(method="fp4", double_quant=True),
    "int4-g32": dict(method="rtn", bits=4, group_size=32, sym=False),
    "gguf-q4_k_m": dict(method="gguf", quant_type="Q4_K_M"),
}
# A fixed text: one repeated pattern of token ids, so a rank-8 adapter on q/v can learn it.
IDS = torch.tensor([[3, 17, 42, 99, 7, 250, 11, 64] * 4, [5, 8, 13, 21, 34, 55, 89, 144] * 4])
STEPS, LR = 20, 2e-2
# Measured (torch 2.14.1, the seeded tiny llama, nf4-dq): 20 steps take the loss from 6.293 to 5.678 (-9.8 %); we
# ask for 8 %. The dequantized float model (nn.Linear, peft's own LoRA) with the same adapter init follows the hfq
# model step by step within 4.1e-4 relative: the native CPU kernels may run a float32 prefill through bf16 matmuls,
# which moves the first loss by 2e-4, and the gap does not grow over the 20 steps (wrong gradients would make it).
# Other layouts are checked the same way over 5 steps, to keep the tests fast.
LOSS_DROP = 0.92
LOSS_TOL = 1e-3


def _lora_config():
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def _load(path, name):
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=hfq.HfqConfig(**CONFIGS[name]))


def _packed(model):
    """Every layout tensor of every HfqLinear (codes, scales, absmax), by the layer's name without peft's wrapper."""
    return {f"{n.replace('.base_layer', '')}.{t}": getattr(m, t).clone() for n, m in model.named_modules()
            if isinstance(m, HfqLinear) for t in m.layout_names}


def _train(model, steps=STEPS):
    torch.manual_seed(1)
    peft_model = get_peft_model(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False),
                                _lora_config())
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=LR)
    losses = []
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return peft_model.eval(), losses


def _check_training(path, name, steps):
    """Train on the hfq model and on its dequantized float copy; return the hfq peft model and its losses."""
    model = _load(path, name)
    packed = _packed(model)
    assert packed and any(isinstance(m, HfqLinear) for m in model.modules())
    peft_model, losses = _train(model, steps)
    lora = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "lora_" not in n)
    after = _packed(peft_model.get_base_model())
    assert after.keys() == packed.keys() and all(torch.equal(after[k], packed[k]) for k in packed)

    ref = _load(path, name)
    ref.dequantize()   # nn.Linear with the same dequantized weights: peft's own LoRA and torch's autograd
    assert not any(isinstance(m, HfqLinear) for m in ref.modules())
    _, ref_losses = _train(ref, steps)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=LOSS_TOL, atol=LOSS_TOL)
    return peft_model, losses


def test_qlora_nf4_dq_learns_like_the_float_model_and_the_adapter_reloads(tiny_llama_dir, tmp_path):
    peft_model, losses = _check_training(tiny_llama_dir, "nf4-dq", STEPS)
    assert losses[-1] < LOSS_DROP * losses[0], losses
    assert isinstance(peft_model.base_model.model.model.layers[0].self_attn.q_proj, HfqLoraLinear)
    # the adapter alone is saved; it reloads onto a fresh hfq model to the same logits
    peft_model.save_pretrained(tmp_path)
    saved = safe_open(str(tmp_path / "adapter_model.safetensors"), "pt").keys()
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)
    with torch.no_grad():
        want = peft_model(input_ids=IDS).logits
        again = PeftModel.from_pretrained(_load(tiny_llama_dir, "nf4-dq"), tmp_path).eval()
        assert torch.equal(again(input_ids=IDS).logits, want)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "nf4-dq"])
def test_qlora_on_every_layout_matches_the_float_model(name, tiny_llama_dir, llama256_dir):
    path = llama256_dir if name.startswith("gguf") else tiny_llama_dir   # k-quants want rows of 256
    _, losses = _check_training(path, name, steps=5)
    assert losses[-1] < losses[0], losses


def test_merge_and_unload_names_the_fix_and_the_fix_gives_a_float_model(tiny_llama_dir, tmp_path):
    peft_model, _ = _train(_load(tiny_llama_dir, "nf4-dq"), steps=5)
    short = IDS[:1, :12]   # up to 16 rows the native kernels stay in float32 (tests/helpers.py)
    with torch.no_grad():
        want = peft_model(input_ids=short).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=short).logits
    with pytest.raises(ValueError, match=r"cannot merge a LoRA adapter into packed nf4 weights.*dequantize\(\)"):
        peft_model.merge_and_unload()
    peft_model.save_pretrained(tmp_path)
    base = peft_model.unload().dequantize()          # the fix the error names
    merged = PeftModel.from_pretrained(base, tmp_path).merge_and_unload()
    assert not any(isinstance(m, HfqLinear) for m in merged.modules())
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with torch.no_grad():
        got = merged(input_ids=short).logits
    assert_logits_close(got, want)
    assert (got - plain).abs().max() > 20 * KERNEL_LOGIT_TOL * want.abs().max()   # the adapter is in there


def test_lora_variants_that_need_the_float_weight_are_refused(tiny_llama_dir):
    model = _load(tiny_llama_dir, "nf4")
    with pytest.raises(ValueError, match="DoRA"):
        get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match=r"init_lora_weights='pissa'.*packed in nf4"):
        get_peft_model(_load(tiny_llama_dir, "nf4"), LoraConfig(r=4, target_modules=["q_proj"],
                                                                init_lora_weights="pissa"))


def test_trainer_accepts_the_hfq_model(tiny_llama_dir, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _load(tiny_llama_dir, "nf4-dq")
    assert model.hf_quantizer.is_trainable
    peft_model = get_peft_model(prepare_model_for_kbit_training(model), _lora_config())
    data = [{"input_ids": row, "labels": row} for row in IDS]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=LR,
                             use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=peft_model, args=args, train_dataset=data)
    out = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 4 and losses[-1] < losses[0] and out.training_loss > 0
