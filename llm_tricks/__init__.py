"""llm_tricks: explained reference implementations of fine-tuning tricks, each tested equal to the library it explains.

Read llm_tricks/README.md for the index and the reading order. Every trick lives in its own folder with a
README (idea, math, code walk-through, when to use it, measured result) and a short plain-PyTorch module.
"""
