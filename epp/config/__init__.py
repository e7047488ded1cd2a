"""Loading the GIE ``EndpointPickerConfig`` YAML into a wired, validated configuration."""
