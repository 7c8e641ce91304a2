"""Collectors: the scraper (and later the host agent) that pull telemetry into Stackwatch."""
