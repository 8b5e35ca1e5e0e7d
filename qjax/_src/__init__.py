"""qjax's implementation (private): import what you use from ``qjax`` and its public modules."""
