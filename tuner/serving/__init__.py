"""The serve flow: the engine commands (vllm, flagscale, transformers) and the checkpoint writer."""
