"""Resources: device profiles (devices.py) and what a model needs on a device (profile.py)."""
