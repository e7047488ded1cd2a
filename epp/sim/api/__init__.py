"""The HTTP routes of a replica: OpenAI inference, info and render, LoRA and /sim control."""

__all__: list[str] = []
