"""Loading the GIE ``EndpointPickerConfig`` YAML into a wired, validated configuration."""

__all__: list[str] = []
