"""Column names, input contracts and output table schemas: the one place they are spelled.

Input contract (any of CSV with a header, Parquet, JSON lines):
  interactions: user_id, item_id, timestamp [, event_type] [, weight | rating]
  items:        item_id, title [, description] [, categories] [, tags] [, updated_at]
  users:        user_id [, segment] [, interests] [, updated_at]   (optional: registered users,
                the segment whose popular items a user without history is served, and what
                they say they like, in their own words: a user without history but with
                interests is served from the model's text path)
  queries:      query, timestamp [, user_id] [, item_id]   (optional: a search log; item_id is
                the item the user clicked, if any: clicks train search, the most frequent
                queries get a precomputed query_topn table)
``timestamp``/``updated_at`` are epoch seconds or ISO-8601; ``categories``/``tags`` are lists or
strings separated by ``|`` (``,`` and ``;`` are accepted too).
Tests: tests/unit/recsys_lib/test_validate.py, tests/unit/recsys_lib/test_checks.py.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

USER_COL = "user_id"
ITEM_COL = "item_id"
TIMESTAMP_COL = "timestamp"
EVENT_TYPE_COL = "event_type"
WEIGHT_COL = "weight"
RATING_COL = "rating"

TITLE_COL = "title"
DESCRIPTION_COL = "description"
CATEGORIES_COL = "categories"
TAGS_COL = "tags"
UPDATED_AT_COL = "updated_at"
SEGMENT_COL = "segment"
INTERESTS_COL = "interests"

DS_COL = "ds"

REASON_COL = "reason"
SOURCE_FILE_COL = "source_file"
RAW_RECORD_COL = "raw_record"  # in quarantine: the original text of a line that could not be parsed

QUERY_COL = "query"  # a search query's text (search pairs: lower-cased tags and categories)
DOCUMENT_COL = "document"
CONTENT_HASH_COL = "content_hash"
VECTOR_COL = "vector"
POOLED_COL = "pooled"  # the transformer's mean-pooled output of a document, before the item tower's heads
BIAS_COL = "bias"  # the model's item bias (a popularity prior), added to user-item logits
MODEL_VERSION_COL = "model_version"
RANK_COL = "rank"
SCORE_COL = "score"
SIMILAR_ITEM_COL = "similar_item_id"
REASON_ITEM_COL = "reason_item_id"  # the history item that best explains a recommendation
SOURCE_COL = "source"  # what a user's list was ranked from: one of LIST_SOURCES
FROM_HISTORY, FROM_INTERESTS, FROM_POPULARITY = "history", "interests", "popularity"
LIST_SOURCES = (FROM_HISTORY, FROM_INTERESTS, FROM_POPULARITY)
HISTORY_COL = "history"  # item ids, oldest first
HISTORY_TS_COL = "history_ts"  # epoch seconds, aligned with HISTORY_COL
SEEN_COL = "seen"  # every item the user interacted with up to ds
VALIDATION_COL = "is_validation"  # each user's latest training event, held out for early stopping
HOLDOUT_COL = "is_holdout"  # the time-based holdout, while the features job splits
N_INTERACTIONS_COL = "n_interactions"  # item stats: positive events up to ds
N_SEARCHES_COL = "n_searches"  # top queries: how often the (normalised) query was searched up to ds
N_USERS_COL = "n_users"  # item stats: distinct users (the item's popularity); per segment in segment_popularity
LAST_TS_COL = "last_ts"  # item stats: epoch seconds of the latest event
SEGMENT_USERS_COL = "segment_users"  # segment_popularity: users of the segment with any interaction

DEFAULT_EVENT_TYPE = "interaction"
LIST_SEPARATORS = "|,;"


class Entity:
    """An input entity: its required and optional columns."""

    def __init__(self, name: str, required: tuple[str, ...], optional: tuple[str, ...]):
        self.name = name
        self.required = required
        self.optional = optional


INTERACTIONS = Entity(
    "interactions",
    required=(USER_COL, ITEM_COL, TIMESTAMP_COL),
    optional=(EVENT_TYPE_COL, WEIGHT_COL, RATING_COL),
)
ITEMS = Entity(
    "items",
    required=(ITEM_COL, TITLE_COL),
    optional=(DESCRIPTION_COL, CATEGORIES_COL, TAGS_COL, UPDATED_AT_COL),
)
USERS = Entity("users", required=(USER_COL,), optional=(SEGMENT_COL, INTERESTS_COL, UPDATED_AT_COL))
QUERIES = Entity("queries", required=(QUERY_COL, TIMESTAMP_COL), optional=(USER_COL, ITEM_COL))
ENTITIES = {e.name: e for e in (INTERACTIONS, ITEMS, USERS, QUERIES)}
OPTIONAL_ENTITIES = ("users", "queries")  # a drop may leave these out

# Output tables: the product downstream systems read.
USER_TOPN_SCHEMA = pa.schema(
    [
        pa.field(USER_COL, pa.string(), nullable=False),
        pa.field(RANK_COL, pa.int32(), nullable=False),
        pa.field(ITEM_COL, pa.string(), nullable=False),
        pa.field(SCORE_COL, pa.float32(), nullable=False),
        pa.field(MODEL_VERSION_COL, pa.string(), nullable=False),
        pa.field(DS_COL, pa.string(), nullable=False),
        pa.field(REASON_ITEM_COL, pa.string(), nullable=True),
        pa.field(SOURCE_COL, pa.string(), nullable=False),
    ]
)
# The most frequent queries of the search log and the items search answers them with (cosine of
# the query's vector and the item vectors, as PublishedTables.search ranks).
QUERY_TOPN_SCHEMA = pa.schema(
    [
        pa.field(QUERY_COL, pa.string(), nullable=False),
        pa.field(RANK_COL, pa.int32(), nullable=False),
        pa.field(ITEM_COL, pa.string(), nullable=False),
        pa.field(SCORE_COL, pa.float32(), nullable=False),
        pa.field(MODEL_VERSION_COL, pa.string(), nullable=False),
        pa.field(DS_COL, pa.string(), nullable=False),
    ]
)
ITEM_SIMILAR_SCHEMA = pa.schema(
    [
        pa.field(ITEM_COL, pa.string(), nullable=False),
        pa.field(RANK_COL, pa.int32(), nullable=False),
        pa.field(SIMILAR_ITEM_COL, pa.string(), nullable=False),
        pa.field(SCORE_COL, pa.float32(), nullable=False),
        pa.field(MODEL_VERSION_COL, pa.string(), nullable=False),
        pa.field(DS_COL, pa.string(), nullable=False),
    ]
)
# The query encoder, published beside the tables: an ONNX graph (token ids, mask -> unit vector)
# and its config (max_length, dim, temperature).
QUERY_GRAPH, QUERY_CONFIG = "query.onnx", "query_encoder.json"

# For online retrieval with the same model: score(user, item) = dot(user vector, item vector) +
# item bias, exactly the model's score (user vectors are the user tower's unit vector divided by the
# learned temperature); item-to-item similarity is dot(item vector, item vector), a cosine.
# The manifest's ``temperature`` scores a user built from item vectors alone the same way.
ITEM_VECTORS_SCHEMA = pa.schema(
    [
        pa.field(ITEM_COL, pa.string(), nullable=False),
        pa.field(VECTOR_COL, pa.list_(pa.float32()), nullable=False),
        pa.field(BIAS_COL, pa.float32(), nullable=False),
        pa.field(MODEL_VERSION_COL, pa.string(), nullable=False),
    ]
)
USER_VECTORS_SCHEMA = pa.schema(
    [
        pa.field(USER_COL, pa.string(), nullable=False),
        pa.field(VECTOR_COL, pa.list_(pa.float32()), nullable=False),
        pa.field(MODEL_VERSION_COL, pa.string(), nullable=False),
    ]
)
ITEM_EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field(ITEM_COL, pa.string(), nullable=False),
        pa.field(VECTOR_COL, pa.list_(pa.float32()), nullable=False),
        pa.field(BIAS_COL, pa.float32(), nullable=False),
        pa.field(CONTENT_HASH_COL, pa.string(), nullable=False),
        pa.field(MODEL_VERSION_COL, pa.string(), nullable=False),
    ]
)


def day_end(ds: str) -> dt.datetime:
    """Exclusive upper bound of a logical date ds, UTC (naive, as Spark's session reads it)."""
    return dt.datetime.combine(dt.date.fromisoformat(ds), dt.time()) + dt.timedelta(days=1)


def day_end_seconds(ds: str) -> int:
    """``day_end`` in epoch seconds: "now" for features taken as of the end of ds."""
    return int(day_end(ds).replace(tzinfo=dt.timezone.utc).timestamp())
