"""lorapipe: photos of one subject in, an SDXL LoRA out, then new images of that subject.

Importing this package is cheap on purpose: torch and diffusers load only inside the modules that need them.
"""

__version__ = "0.1.0"
