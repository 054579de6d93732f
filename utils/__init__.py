"""The builders of a run. Importing the package first silences startup messages that say nothing about the run
(every entry point imports utils before peft, transformers' Trainer or bitsandbytes):

- bitsandbytes, on CPUs with AVX512-BF16, tries to fetch an optional faster 4-bit kernel from the model hub through
  the `kernels` package and warns "Failed to load CPU gemm_4bit_forward ... pip install kernels" when it is absent;
  its own kernel is then used, correct and in use either way (and the hub is not ours to reach offline).
- torch's DataLoader warns that pin_memory has no effect without an accelerator (a GPU run uses it).
- transformers' own code calls its deprecated `is_gradient_checkpointing` (nothing here does).
"""
import logging
import warnings

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator is found")
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
