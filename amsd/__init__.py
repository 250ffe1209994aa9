"""amsd: live data from smart electricity meters (HAN/P1) to MQTT."""

__version__ = "0.1.0"
