"""The feature service models are trained and served with."""

from feast import FeatureService

from feast_repo.features import (
    user_login_features,
    user_purchase_features,
    user_session_features,
)

user_fraud_features = FeatureService(
    name="user_fraud_features",
    features=[
        user_purchase_features[["purchase_count_30m", "avg_amount_1h", "max_amount_24h"]],
        user_login_features[["failed_logins_10m"]],
        user_session_features[["distinct_categories_session"]],
    ],
    description="The five reference fraud features of shared/spec/features.md.",
)
