"""The Hugging Face Trainer callback on tiny BERT and GPT-2 models built from configs (nothing downloaded):
every method, accumulation, clipping, logs, and a resume that equals an uninterrupted run bit for bit."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

from snrprune.integrations.transformers import STATE_FILE, PruningCallback  # noqa: E402
from snrprune.pruners.snr_auto import epoch_window_steps  # noqa: E402

VOCAB, LENGTH, SAMPLES = 32, 8, 32
BATCH, ACCUMULATE = 4, 2
EPOCH_STEPS = SAMPLES // BATCH // ACCUMULATE  # optimizer steps an epoch: 4
# GPT-2's projections (Hugging Face Conv1D) and its tied wte/lm_head tensor, pruned with one mask
GPT2_WEIGHTS = ["transformer.h.*", "lm_head"]


class TokenData(torch.utils.data.Dataset):
    """Random token ids; the label of a sequence is its first token's parity (BERT), the LM shifts its ids (GPT-2)."""

    def __init__(self, lm: bool, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (SAMPLES, LENGTH), generator=generator)
        self.lm = lm

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        ids = self.ids[i]
        return {"input_ids": ids, "labels": ids.clone() if self.lm else ids[0] % 2}


def bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=LENGTH, num_labels=2,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=LENGTH, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def make_trainer(model, callbacks, out, lm=False, **overrides):
    settings = dict(
        output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATE,
        num_train_epochs=3, learning_rate=1e-2, logging_steps=2, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    settings.update(overrides)
    return transformers.Trainer(model=model, args=transformers.TrainingArguments(**settings), train_dataset=TokenData(lm), callbacks=callbacks)


class LogRecorder(transformers.TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def logged(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("method, options", [("dense", {}), ("dpf", {"target_sparsity": 0.5, "update_every": 2}), ("snr", {}), ("snr-auto", {"update_every": 2})])
def test_every_method_on_bert_with_accumulation(tmp_path, method, options):
    callback, after = PruningCallback(method, **options), LogRecorder()
    trainer = make_trainer(bert(), [callback, after], tmp_path)
    trainer.train()
    pruning = callback.pruning
    assert trainer.state.global_step == 3 * EPOCH_STEPS == trainer.state.max_steps
    assert pruning.step_count == trainer.state.global_step  # one pruning step per accumulated optimizer step
    assert pruning.optimizer is None  # unwrapped at the end of train()
    assert "classifier.weight" in pruning.weights and "bert.encoder.layer.1.output.dense.weight" in pruning.weights
    if method == "dpf":
        assert pruning.total_steps == trainer.state.max_steps
        assert pruning.sparsity() == pytest.approx(0.5, abs=0.01)
    if method == "snr":
        assert pruning.burn_in_steps == EPOCH_STEPS
        assert pruning.sparsity() > 0
    if method == "snr-auto":
        assert pruning.window_steps == epoch_window_steps(EPOCH_STEPS)
    if method == "dense":
        assert pruning.sparsity() == 0
    # sparsity in every training log; the per-weight values in log_history
    entries = logged(trainer)
    assert len(entries) == trainer.state.global_step // 2
    assert all("pruning/sparsity" in entry for entry in entries)
    assert entries[-1]["pruning/sparsity"] == pytest.approx(pruning.sparsity())
    assert entries[-1]["pruning/sparsity/classifier.weight"] == pytest.approx(pruning.layer_sparsity()["classifier.weight"])
    assert all("pruning/sparsity" in logs for logs in after.logs)  # a callback after this one sees it


@pytest.mark.parametrize("method, options", [("snr", {}), ("dpf", {"target_sparsity": 0.5, "update_every": 2})])
def test_gpt2_language_model(tmp_path, method, options):
    callback = PruningCallback(method, include=GPT2_WEIGHTS, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(gpt2(), [callback], tmp_path, lm=True, num_train_epochs=2)
        trainer.train()
    assert not [w for w in caught if "not pruned" in str(w.message)]  # the tied tensor is included: no warning
    pruning = callback.pruning
    assert pruning.step_count == trainer.state.global_step == 2 * EPOCH_STEPS
    assert "transformer.h.0.attn.c_attn.weight" in pruning.weights  # Hugging Face Conv1D
    model = trainer.model
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied, pruned as one tensor
    assert "transformer.wte.weight" in pruning.weights and pruning.layer_sparsity()["transformer.wte.weight"] > 0
    assert pruning.sparsity() > 0
    assert logged(trainer)[-1]["pruning/sparsity"] == pytest.approx(pruning.sparsity())


@pytest.mark.parametrize("method, options", [("dpf", {"target_sparsity": 0.5, "update_every": 2}), ("snr-auto", {"update_every": 2, "window_steps": 2})])
def test_gpt2_at_unit_granularity_prunes_heads_and_mlp_units(tmp_path, method, options):
    pytest.importorskip("torch_pruning")
    from snrprune.units import compact_model, removed_units

    callback = PruningCallback(method, granularity="unit", **options)  # example_inputs from the first batch
    model = gpt2(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the residual stream is no unit group
        trainer = make_trainer(model, [callback], tmp_path, lm=True, num_train_epochs=2)
        trainer.train()
    pruning = callback.pruning
    assert set(pruning.unit_counts()["units_total"]) == {f"transformer.h.{i}.{g}.weight" for i in (0, 1) for g in ("attn.c_attn", "mlp.c_fc")}
    if method == "dpf":
        assert pruning.unit_counts()["unit_sparsity"] == pytest.approx(0.5, abs=0.01)
    model = trainer.model.eval()
    params = dict(model.named_parameters())  # at the end of training, removed units are zero in every entry
    assert all(not params[name][~keep].any() for name, keep in pruning.masks.items())
    example = {"input_ids": torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(3))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compact = compact_model(model, example, removed_units(pruning.groups, dict(model.named_parameters())))
    with torch.no_grad():
        torch.testing.assert_close(compact(**example).logits, model(**example).logits, rtol=1e-5, atol=1e-5)


def test_unit_granularity_without_keyword_batches_asks_for_example_inputs():
    model = gpt2()
    with pytest.raises(ValueError, match="not the keyword arguments of the model; pass example_inputs="):
        PruningCallback._example_inputs(model, [(torch.zeros(4, LENGTH, dtype=torch.long), torch.zeros(4))])
    with pytest.raises(ValueError, match="no training batch.*pass example_inputs="):
        PruningCallback._example_inputs(model, [])
    batch = {"input_ids": torch.arange(4 * LENGTH).reshape(4, LENGTH) % VOCAB, "labels": torch.zeros(4, LENGTH, dtype=torch.long)}
    example = PruningCallback._example_inputs(model, [batch])
    assert torch.equal(example["input_ids"], batch["input_ids"][:2]) and example["labels"].shape == (2, LENGTH)


class Recorder(transformers.TrainerCallback):
    """Records the gradients the optimizer gets (after the trainer's accumulation and clipping)."""

    def __init__(self):
        self.applied = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.applied.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})


def test_pruning_reads_the_accumulated_clipped_gradients_inside_the_torch_optimizer(tmp_path):
    callback, recorder = PruningCallback("snr-auto", window_steps=6), Recorder()
    trainer = make_trainer(bert(), [callback, recorder], tmp_path, max_grad_norm=1e-3, num_train_epochs=1)
    seen = []

    def on_train_begin(args, state, control, **kwargs):  # after the pruning's: spy on its before_step
        pruning = callback.pruning
        before_step = pruning.before_step
        model = kwargs["model"]

        def spy():
            seen.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
            before_step()

        pruning.before_step = spy
        assert isinstance(kwargs["optimizer"], accelerate.optimizer.AcceleratedOptimizer)
        assert pruning.optimizer is kwargs["optimizer"].optimizer and type(pruning.optimizer) is torch.optim.AdamW

    recorder.on_train_begin = on_train_begin
    trainer.train()
    assert len(seen) == len(recorder.applied) == EPOCH_STEPS  # once per optimizer step, after both micro-batches
    for ours, applied in zip(seen, recorder.applied):
        assert ours.keys() == applied.keys()
        assert all(torch.equal(ours[name], applied[name]) for name in ours)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ours.values()]))
        assert norm <= 1e-3 * (1 + 1e-4)  # clipped
    assert all(entry["grad_norm"] > 1e-2 for entry in logged(trainer))  # the trainer's own norm, before clipping


class StopAt(transformers.TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def state_of(trainer, callback):
    return {name: t.clone() for name, t in trainer.model.state_dict().items()}, callback.pruning.state_dict()


def assert_same(first, second):
    (weights_a, pruning_a), (weights_b, pruning_b) = first, second
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    assert pruning_a.keys() == pruning_b.keys()
    for key, value in pruning_a.items():
        if isinstance(value, dict) and value and isinstance(next(iter(value.values())), torch.Tensor):
            assert value.keys() == pruning_b[key].keys()
            for name in value:
                assert torch.equal(value[name], pruning_b[key][name]), (key, name)
        else:
            assert value == pruning_b[key], key


@pytest.mark.parametrize(
    "build, method, options",
    [(bert, "snr", {}), (bert, "dpf", {"target_sparsity": 0.6, "update_every": 1}), (gpt2, "snr", {"include": GPT2_WEIGHTS})],
    ids=["bert-snr", "bert-dpf", "gpt2-tied-snr"],
)
def test_resume_equals_an_uninterrupted_run(tmp_path, build, method, options):
    """Stopped after step 6 of 12 (mid-epoch), resumed from its checkpoint by a new trainer with a new model and
    callback: weights, masks and the whole pruning state equal the uninterrupted run's (linear decay, dropout on).
    GPT-2's checkpoint holds its tied tensor once; the pruned tensor comes back tied."""
    lm = build is gpt2
    save = dict(save_strategy="steps", save_steps=6, lr_scheduler_type="linear")
    whole = PruningCallback(method, **options)
    trainer = make_trainer(build(), [whole], tmp_path / "whole", lm=lm, lr_scheduler_type="linear")
    trainer.train()
    expected = state_of(trainer, whole)
    assert whole.pruning.sparsity() > 0

    make_trainer(build(), [PruningCallback(method, **options), StopAt(6)], tmp_path / "parts", lm=lm, **save).train()
    assert (tmp_path / "parts" / "checkpoint-6" / STATE_FILE).is_file()
    saved = torch.load(tmp_path / "parts" / "checkpoint-6" / STATE_FILE, weights_only=True)
    assert saved["global_step"] == 6 and saved["pruning"]["step"] == 6
    resumed = PruningCallback(method, **options)
    trainer = make_trainer(build(seed=5), [resumed], tmp_path / "parts", lm=lm, **save)  # another init: all comes from the checkpoint
    trainer.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-6"))
    assert resumed.pruning.step_count == trainer.state.global_step == 12
    assert_same(state_of(trainer, resumed), expected)
    if lm:
        assert trainer.model.lm_head.weight is trainer.model.transformer.wte.weight


def test_resume_from_a_folder_outside_output_dir(tmp_path):
    save = dict(save_strategy="steps", save_steps=3, max_steps=6)
    make_trainer(bert(), [PruningCallback("snr")], tmp_path / "first", **save).train()
    elsewhere = tmp_path / "moved" / "checkpoint-3"
    shutil.copytree(tmp_path / "first" / "checkpoint-3", elsewhere)
    # the trainer does not tell callbacks where it resumes from: without resume_from_checkpoint in the
    # arguments the callback looks in output_dir/checkpoint-3, finds another run's state there, and refuses it
    make_trainer(bert(seed=1), [PruningCallback("snr")], tmp_path / "other", **save).train()
    with pytest.raises(ValueError, match="does not belong to the checkpoint"):
        make_trainer(bert(), [PruningCallback("snr")], tmp_path / "other", **save).train(resume_from_checkpoint=str(elsewhere))
    with pytest.raises(ValueError, match="no pruning state in .*new.*checkpoint-3.*resume_from_checkpoint"):
        make_trainer(bert(), [PruningCallback("snr")], tmp_path / "new", **save).train(resume_from_checkpoint=str(elsewhere))
    callback = PruningCallback("snr")
    trainer = make_trainer(bert(), [callback], tmp_path / "new", resume_from_checkpoint=str(elsewhere), **save)
    trainer.train(resume_from_checkpoint=str(elsewhere))
    assert callback.pruning.step_count == 6


def test_options_are_checked_when_the_callback_is_built():
    with pytest.raises(ValueError, match="method 'snr' has no option.*target_sparsity.*valid options: burn_in_steps"):
        PruningCallback("snr", target_sparsity=0.5)
    with pytest.raises(ValueError, match="unknown pruning method 'magic'"):
        PruningCallback("magic")
    assert PruningCallback("dpf", target_sparsity=0.5, total_steps=7).options == {"target_sparsity": 0.5, "total_steps": 7}
