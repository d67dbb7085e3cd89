"""ftplan's diagnostics: everything that touches torch, NVML and a training step."""
