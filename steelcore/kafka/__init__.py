"""The only code that talks to Kafka: client configs and clients, topic admin and rotation, dead letters."""
