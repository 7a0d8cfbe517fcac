"""The peer: the same Thompson update job written with Quix Streams (runs in ``.venv-bench``).

Run as ``python -m tests.perf.quix_peer BOOTSTRAP GROUP TOPIC STATE_DIR ARMS``. A
``StreamingDataFrame`` over the reward-event topic (Avro via Quix's own ``AvroDeserializer``, which
is fastavro's ``schemaless_reader``), a stateful ``update`` that keeps ``[alpha, beta]`` per arm in
the key's (campaign_id's) state store, RocksDB with changelog topics, exactly-once, commit every
100 ms like the stage. It stops on SIGTERM (Quix handles it and commits).
"""

from __future__ import annotations

import sys
from typing import Any

from quixstreams import Application, State
from quixstreams.models.serializers.avro import AvroDeserializer

from processor.codec.serde import load_schema_json, strip_logical_types


def main(argv: list[str]) -> int:
    bootstrap, group, topic_name, state_dir, arms_csv = argv[:5]
    arms = set(arms_csv.split(","))
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=0.1,
        state_dir=state_dir,
    )
    schema = strip_logical_types(load_schema_json("BidOutcome"))
    topic = app.topic(topic_name, value_deserializer=AvroDeserializer(schema))
    sdf = app.dataframe(topic)

    def thompson_update(rec: dict[str, Any], state: State) -> None:
        arm = rec["arm"]
        if arm not in arms:
            return
        reward = rec["reward"]
        if reward is None:
            reward = rec["revenue"] - rec["spend"]
        success = rec["success"]
        if success is None:
            success = reward > 0
        counts = state.get(arm, default=[1.0, 1.0])
        counts[0 if success else 1] += 1.0
        state.set(arm, counts)

    sdf = sdf.update(thompson_update, stateful=True)
    app.run(sdf)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
