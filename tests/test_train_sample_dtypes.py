"""Sample images during training with mixed_precision = "bf16" and no_half_vae = true (the recipe's config): the
UNet's latents are bf16 while the VAE stays fp32, and the previews must still be written."""

from __future__ import annotations

from lorapipe.train.run import run_training
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)


def test_bf16_training_with_a_full_precision_vae_writes_samples(tiny_model_dir, sample_dataset_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("dwjz toy --w 64 --h 64 --s 2\n", encoding="utf-8")
    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        show_progress=False,
        step_lines=False,
        overrides=(
            "max_train_steps=1",
            'mixed_precision="bf16"',
            "no_half_vae=true",
            f'sample_prompts="{prompts}"',
            "sample_every_n_steps=1",
        ),
    )
    assert result.status == "finished"
    (sample,) = (tmp_path / "out" / "sample").glob("*.png")
    assert sample.stat().st_size > 0
