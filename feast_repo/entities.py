"""Entities: `user` (join key `user_id`, shared/spec/features.md), and `category` (the key
of the category risk table events look up by their `category` column)."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="An end user of the shop; the key of every fraud feature.",
)

category = Entity(
    name="category",
    join_keys=["category"],
    value_type=ValueType.STRING,
    description="A product category; keys the category risk table.",
)
