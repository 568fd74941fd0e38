"""An example racmkd plugin: a 3-axis motion sensor (`imu`) as a third input modality.

- `racmkd_imu.signal`: its torch-free half (options, spec, Signal): what an edge device needs.
- `racmkd_imu.modality`: its training half (the Modality: items per split, augmentation, features).
- `racmkd_imu.synthetic`: a synthetic dataset of traces per digit, to try it on AV-MNIST's labels.

Each half's `register()` is named by the package's entry points (pyproject.toml); racmkd calls it
once, at the first lookup of a registry of its group. tests/test_third_modality.py runs it end to end.
"""
