"""An example racmkd plugin: a pen's IMU (`imu`: accelerometer and gyroscope, 6 axes) as a third
input modality, on real recordings of one writer's digits.

- `racmkd_imu.signal`: its torch-free half (options, spec, Signal): what an edge device needs.
- `racmkd_imu.modality`: its training half (the Modality: items per split, augmentation, features).
- `racmkd_imu.data`: the recordings' parser, split and download (`python -m racmkd_imu.data`), torch-free.

Each half's `register()` is named by the package's entry points (pyproject.toml); racmkd calls it
once, at the first lookup of a registry of its group. tests/test_third_modality.py runs it end to end.
"""
