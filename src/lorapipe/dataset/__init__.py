"""Kohya datasets: folder rules, dataset_config TOML, images, captions, buckets, `dataset check`, sample data.

Interfaces (as built; numpy/PIL only, no torch):
- `blueprint`: frozen `SubsetSpec`, `DatasetBlueprint`; `DATASET_KEYS` (flat Kohya keys this layer consumes).
- `build`: `blueprint_from_args(args, *, source, dataset_dir=None)` (folder mode; `/opt/ml/...` train_data_dir
  falls back to `dataset_dir` or the folder of `source`; delegates when `dataset_config` is set) and
  `blueprint_from_dataset_config(path, args)` (strict keys). Errors: `ConfigError` / `DatasetError`.
- `scan`: `scan_dataset(blueprint, *, deep=False, hash_all=False) -> DatasetScan(items, problems)`;
  `ImageItem(path, subset, caption, caption_path, original_size (w,h), bucket (w,h), resized_size, repeats,
  sha256)`; `steps_per_epoch(scan, batch_size=None)`, `total_steps(scan, max_train_epochs=, max_train_steps=,
  gradient_accumulation_steps=) -> (steps, epochs)`, `bucket_sample_counts(scan)`.
- `batches`: `epoch_batches(scan, blueprint, epoch, seed)` (epoch 1-based, sd-scripts order) and
  `load_sample(item, blueprint, epoch, rng) -> Sample(pixels uint8 HxWx3, caption, original_size (h,w),
  crop_top_left (top,left), target_size (h,w), loss_weight, path, flipped)`.
- `check`: `check_dataset(path_or_url, blueprint=None, *, config_path, dataset_config_path, train_args,
  endpoint_url, cache_dir, count_tokens, hash_all, deep) -> CheckReport` (`.has_errors`, `.problems`,
  `.to_json()`), `read_flat_config(path)`; `render`: `render_report(report)` (the text form).
- `sample`: `write_sample_dataset(out_root) -> out_root/"0001-dataset"`.
- `prepare`: `prepare_dataset(photos, out=None, *, trigger, class_name, preset, steps, progress, base_model)
  -> PrepareResult`; `preset`: shipped Kohya TOML presets (`presets/*.toml`), `plan_schedule`, `render_config`.
- `caption`: `caption_dataset(dataset_dir, *, captioner, model, overwrite, batch_size, progress, device)
  -> CaptionSummary`; `captioners`: `load_captioner(kind, model, device=)`, `tiny.make_tiny_captioner(out, kind)`.
- Lower level: `layout` (folder rule), `images` (`probe_image`, `decode_image`), `captions`, `buckets`,
  `problems.Problem(path, severity, reason)`.
"""
