"""Image evaluation: FID through clean-fid (``fid/...``), a labelled classifier-feature substitute
(``fd_classifier/...``, NOT FID), and trajectory alignment / sample grids."""

from precondlab.evaluation.features import (CLASSIFIER_LABEL, FeatureExtractor,  # noqa: F401
                                            FeatureExtractorError, INCEPTION_URL, SmallClassifier,
                                            build_feature_extractor, classifier_accuracy,
                                            cleanfid_inception_dir, list_feature_extractors,
                                            load_classifier, save_classifier, train_classifier)
from precondlab.evaluation.fid import (FIDEvaluator, cleanfid_stats_path, cleanfid_stats_url,  # noqa: F401
                                       frechet_distance_of_features, to_uint8)
from precondlab.evaluation.image_metrics import alignment, save_grid  # noqa: F401
