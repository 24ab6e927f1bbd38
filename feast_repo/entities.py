"""The `user` entity (join key `user_id`), as in shared/spec/features.md."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="An end user of the shop; the key of every fraud feature.",
)
