"""Tables (pandas, CSV/JSON, rich) and plots (matplotlib) of measurements."""
