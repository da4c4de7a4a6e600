"""The simulator's knobs: one :class:`SimConfig`, every default with the reason beside it.

A config file section looks like::

    [sim]
    seed = 7
    n_users = 20000
    items_per_hour = 5000
    item_lifetime_median = 900      # seconds of event time
    policy = "popularity"

The defaults describe a mid-sized live-commerce site (docs/simulator.md): about 70 impressions
per second of event time, 20k new items per hour living half an hour (median), and a random
policy click-through rate of 0.4%, the rate measured on the Open Bandit random-policy logs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from freshrec.config import Config

__all__ = ["SimConfig"]


class SimConfig(Config):
    """Everything that shapes the simulated world. Same config + same seed = same events.

    Args (by group; times are seconds of event time unless named otherwise):
        seed: seeds every random stream (items, sessions, policy, outcomes, calibration).
        start_time: event time of the first chunk; hour of day is ``(t / 3600) % 24``.
        chunk_seconds: events are generated in fixed chunks on a grid from ``start_time``;
            a closed-loop recommender and the popularity policy see the world as of the
            previous chunk boundary.

        n_users, new_users_per_hour: the initial population and its growth.
        sessions_per_user_per_day: mean session rate of a user of average activity.
        user_activity_sigma: users' activity is lognormal with this sigma (mean 1).
        requests_per_session: mean of a geometric number of recommendation requests.
        request_gap_seconds: mean (exponential) gap between a session's requests.
        slate_size: items per request (positions 0..slate_size-1).
        diurnal_amplitude: traffic is ``1 + A cos(2 pi (hour - 21) / 24)`` times the mean.

        items_per_hour: new listings per hour (Poisson); each is a new item ID.
        item_lifetime_median, item_lifetime_sigma: lognormal lifetime of a listing.
        n_categories, n_sellers: catalog structure; both are Zipf-popular.
        auction_share: share of listings that are auctions (bids) rather than fixed price
            (add_to_cart, then purchase).
        price_median, price_sigma: lognormal listing price.

        random_ctr: target click-through rate of the random policy; the click model's bias
            is solved at start so a random slate clicks at this rate.
        interest_sigma: spread of a user's interest across categories (logit units).
        latent_dim, latent_sigma: user/item latent vectors; their dot product has std
            ``latent_sigma`` (taste beyond categories).
        item_quality_sigma, seller_quality_sigma: per-item and per-seller logit offsets
            (what a popularity policy can find).
        position_decay: click logit falls by ``position_decay * log1p(position)``.
        hour_effect, device_effect: context effects on the click logit (amplitude of the
            evening peak; ios is +device_effect, web is -device_effect, android 0).

        interest_timescale_days: interests drift as an Ornstein-Uhlenbeck process with this
            time constant (a small random walk that stays calibrated).
        jumps_per_user_per_day: rate at which a user suddenly turns to a new category.

        click_delay_median, click_delay_sigma: lognormal delay from impression to click.
        followup_rate: P(bid, or add_to_cart | click) for an item of average affinity.
        purchase_given_cart: P(purchase | add_to_cart).
        followup_delay_median, followup_delay_sigma: lognormal delay of each later action.
        max_action_delay: every delay is clipped here, so a join window of this size
            sees every action.

        policy: the built-in policy used when no recommender is given.
        popularity_halflife: event-time half-life of the popularity policy's click counts.
        popularity_prior_impressions: prior weight of the popularity policy's CTR estimate.
    """

    model_config = ConfigDict(allow_inf_nan=False)  # merged with Config's: inf/NaN knobs are errors

    seed: int = Field(0, ge=0, lt=2**63)
    start_time: float = Field(0.0, ge=0)
    chunk_seconds: float = Field(10.0, gt=0, le=3600)  # ~700 impressions per chunk: vectorizes well

    # users and sessions
    n_users: int = Field(100_000, ge=1, le=50_000_000)
    new_users_per_hour: float = Field(2_000.0, ge=0)  # sign-ups: user IDs churn too
    sessions_per_user_per_day: float = Field(2.0, gt=0)
    user_activity_sigma: float = Field(1.2, ge=0, le=4)  # heavy tail: most users are seldom seen
    requests_per_session: float = Field(3.0, ge=1)
    request_gap_seconds: float = Field(30.0, gt=0)
    slate_size: int = Field(10, ge=1, le=1000)
    diurnal_amplitude: float = Field(0.5, ge=0, lt=1)  # evening peak 3x the night trough

    # items
    items_per_hour: float = Field(20_000.0, gt=0)
    item_lifetime_median: float = Field(1800.0, gt=0)  # half an hour: auctions and flash listings
    item_lifetime_sigma: float = Field(1.0, ge=0, le=4)  # a few minutes .. a few hours
    n_categories: int = Field(40, ge=2, le=100_000)
    n_sellers: int = Field(2_000, ge=1)
    auction_share: float = Field(0.6, ge=0, le=1)
    price_median: float = Field(30.0, gt=0)
    price_sigma: float = Field(1.0, ge=0, le=4)

    # ground-truth click model
    random_ctr: float = Field(0.004, gt=0, lt=0.5)  # Open Bandit random policy: 0.38-0.46%
    interest_sigma: float = Field(0.5, ge=0)  # with the three below: oracle CTR ~10x random
    latent_dim: int = Field(8, ge=1, le=256)
    latent_sigma: float = Field(0.35, ge=0)
    item_quality_sigma: float = Field(0.35, ge=0)  # with the seller: popularity CTR ~2x random
    seller_quality_sigma: float = Field(0.25, ge=0)
    position_decay: float = Field(0.3, ge=0)  # Open Bandit positions 1-3 differ little
    hour_effect: float = Field(0.2, ge=0)
    device_effect: float = Field(0.15, ge=0)

    # drift
    interest_timescale_days: float = Field(3.0, gt=0)
    jumps_per_user_per_day: float = Field(0.1, ge=0)  # about one sudden new interest per 10 days

    # delayed actions
    click_delay_median: float = Field(5.0, gt=0)  # a click comes seconds after the impression
    click_delay_sigma: float = Field(0.8, ge=0)
    followup_rate: float = Field(0.2, gt=0, lt=1)
    purchase_given_cart: float = Field(0.4, ge=0, le=1)
    followup_delay_median: float = Field(120.0, gt=0)  # bids and purchases come minutes later
    followup_delay_sigma: float = Field(1.0, ge=0)
    max_action_delay: float = Field(1800.0, gt=0)  # the joiner's window must cover this

    # built-in policies
    policy: Literal["random", "popularity", "oracle"] = "random"
    popularity_halflife: float = Field(600.0, gt=0)
    popularity_prior_impressions: float = Field(200.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if self.click_delay_median >= self.max_action_delay:
            raise ValueError(
                f"click_delay_median ({self.click_delay_median}) must be below max_action_delay "
                f"({self.max_action_delay})"
            )
        return self

    @property
    def session_rate(self) -> float:
        """Mean sessions per second of event time for the initial population."""
        return self.n_users * self.sessions_per_user_per_day / 86_400.0
