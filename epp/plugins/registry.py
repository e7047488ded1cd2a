"""The in-tree plugin registry, built as a value (no import-time registration)."""

from __future__ import annotations

from epp.flowcontrol.fairness import GlobalStrictFairnessPolicy, RoundRobinFairnessPolicy
from epp.flowcontrol.ordering import (
    EdfOrderingPolicy,
    FcfsOrderingPolicy,
    SloDeadlineOrderingPolicy,
    WorkloadAwareOrderingPolicy,
)
from epp.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from epp.flowcontrol.usage_limit import PriorityHoldbackPolicy, StaticUsageLimitPolicy
from epp.framework.attributes import LATENCY_PREDICTIONS_KEY, PREFIX_MATCH_KEY
from epp.framework.registry import Registry
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.file_source import JsonFileSource, JsonMetricExtractor
from epp.plugins.datalayer.metrics_source import MetricsDataSource
from epp.plugins.datalayer.prometheus_metric import PrometheusMetricExtractor
from epp.plugins.filters.header_testing import HeaderBasedTestingFilter
from epp.plugins.filters.load_imbalance import LoadImbalanceFilter
from epp.plugins.inflight.producer import INFLIGHT_LOAD_KEY, InFlightLoadProducer
from epp.plugins.kvcache.scorer import PrecisePrefixCacheScorer
from epp.plugins.parsers.openai import OpenAIParser
from epp.plugins.pickers.max_score import MaxScorePicker
from epp.plugins.pickers.random_picker import RandomPicker
from epp.plugins.pickers.weighted_random import WeightedRandomPicker
from epp.plugins.prefix.affinity_filter import PrefixCacheAffinityFilter
from epp.plugins.prefix.producer import ApproxPrefixCacheProducer
from epp.plugins.prefix.scorer import PrefixCacheScorer
from epp.plugins.profile.single import SingleProfileHandler
from epp.plugins.requestcontrol.served_verifier import DestinationEndpointServedVerifier
from epp.plugins.scorers.kv_cache import KVCacheUtilizationScorer
from epp.plugins.scorers.lora_affinity import LoraAffinityScorer
from epp.plugins.scorers.metric import MetricScorer
from epp.plugins.scorers.prefill_load import PrefillLoadScorer
from epp.plugins.scorers.queue import QueueScorer
from epp.plugins.scorers.running_requests import RunningRequestsSizeScorer
from epp.plugins.scorers.token_load import TokenLoadScorer
from epp.plugins.slo.admitter import LatencySloAdmitter
from epp.plugins.slo.producer import PredictedLatencyProducer
from epp.plugins.slo.profile_handler import SloAwareProfileHandler
from epp.plugins.slo.scorer import LatencyScorer
from epp.plugins.slo.tier_filter import SloHeadroomTierFilter
from epp.plugins.slo.tracker import SloRequestTracker

__all__ = ["default_registry"]


def default_registry() -> Registry:
    registry = Registry()
    for cls in (
        SingleProfileHandler,
        QueueScorer,
        KVCacheUtilizationScorer,
        RunningRequestsSizeScorer,
        LoraAffinityScorer,
        PrefixCacheScorer,
        PrecisePrefixCacheScorer,
        TokenLoadScorer,
        PrefillLoadScorer,
        MetricScorer,
        PrefixCacheAffinityFilter,
        LoadImbalanceFilter,
        MaxScorePicker,
        RandomPicker,
        WeightedRandomPicker,
        MetricsDataSource,
        CoreMetricsExtractor,
        PrometheusMetricExtractor,
        JsonFileSource,
        JsonMetricExtractor,
        OpenAIParser,
        # SLO-aware routing (latency predictions from predicted-latency-producer).
        SloAwareProfileHandler,
        LatencyScorer,
        SloHeadroomTierFilter,
        LatencySloAdmitter,
        SloRequestTracker,
        # Flow control: saturation detectors (also filters) and the queue's policies.
        UtilizationDetector,
        ConcurrencyDetector,
        GlobalStrictFairnessPolicy,
        RoundRobinFairnessPolicy,
        FcfsOrderingPolicy,
        EdfOrderingPolicy,
        SloDeadlineOrderingPolicy,
        WorkloadAwareOrderingPolicy,
        StaticUsageLimitPolicy,
        PriorityHoldbackPolicy,
        # Test only (GIE conformance suite): never in a production config.
        HeaderBasedTestingFilter,
        DestinationEndpointServedVerifier,
    ):
        registry.register(cls)
    registry.register(ApproxPrefixCacheProducer, default_producer_for=(PREFIX_MATCH_KEY,))
    registry.register(InFlightLoadProducer, default_producer_for=(INFLIGHT_LOAD_KEY,))
    registry.register(PredictedLatencyProducer, default_producer_for=(LATENCY_PREDICTIONS_KEY,))
    return registry
