"""The feature service models are trained and served with."""

from feast import FeatureService
from feast.feature_logging import LoggingConfig
from feast.infra.offline_stores.file_source import FileLoggingDestination

from feast_repo.features import (
    user_credit_features,
    user_login_features,
    user_profile,
    user_purchase_features,
    user_risk_features,
    user_session_features,
)

user_fraud_features = FeatureService(
    name="user_fraud_features",
    features=[
        user_purchase_features[["purchase_count_30m", "avg_amount_1h", "max_amount_24h"]],
        user_login_features[["failed_logins_10m"]],
        user_session_features[["distinct_categories_session"]],
        user_profile[["account_age_days", "credit_score", "segment"]],
        user_credit_features[["max_amount_to_credit_24h"]],
        user_risk_features[["risky_purchase_count_1h"]],
    ],
    description="The fraud features: the five of shared/spec/features.md, the profile as of "
                "the row's time, and the features over joined and looked-up columns.",
    # Served vectors are logged here (sample_rate of requests) when feature_store.yaml uses
    # the feast_bytewax.stores.feature_logging.LoggingProvider; inert with the default provider.
    logging_config=LoggingConfig(
        destination=FileLoggingDestination(path="data/feature_logs/user_fraud_features"),
        sample_rate=1.0,
    ),
)
