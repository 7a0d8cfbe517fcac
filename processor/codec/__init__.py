"""The Avro codec, without Kafka: schemas, record serdes, columnar batch decode and encode.

``serde`` reads the packaged schemas (:mod:`processor.schemas`) and encodes / decodes one record
(fastavro, optionally in the Confluent wire format); ``columnar`` decodes a whole batch of
values into numpy columns and ``columnar_encode`` writes a batch of records from columns. The
engine and the state layouts use these; only :mod:`processor.kafka` talks to brokers.
"""
