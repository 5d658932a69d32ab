"""The contract every other part of streamrec imports: the event schema, entities and features."""
