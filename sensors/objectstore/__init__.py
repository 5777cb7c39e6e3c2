"""The object-store sensor: S3 and S3-compatible stores (MinIO, Ceph RGW) report object changes.

For now this package holds only the pure core, `normalizing.py`: it decodes the notification
formats (raw S3, SNS-wrapped, EventBridge, MinIO's webhook/Kafka/NATS payloads) into
`ObjectChange` values and maps each onto a CloudEvent. It does no I/O; the sensor modes that
receive notifications (SQS, push) or list the bucket (poll) are built on top of it.
"""
