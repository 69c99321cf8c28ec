"""Producers: where a frame enters. Synthetic steel camera, image replay, Kafka publishing."""
