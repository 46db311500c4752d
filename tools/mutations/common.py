"""What the mutation lists share: the Mutation record, its short name `M`, and test ids that several
entries name."""
from dataclasses import dataclass
from typing import List


@dataclass
class Mutation:
    id: str
    file: str
    snippet: str
    replacement: str
    tests: List[str]
    note: str = ""
    slow: bool = False     # the tests that catch it are marked slow: run them anyway


M = Mutation
VSP = "tests/data/stream/test_val_split.py::"
VSF = "tests/train/test_feed.py::test_carve_val_split_names_the_held_out_groups_and_warns_of_lookalike_ids"
SW = "tests/train/test_train_switches.py"
DSW = "tests/train/test_train_data_switches.py"
RES = "tests/train/test_train_resume_shards.py"
WRK = "tests/data/stream/test_worker.py"
ELA = "tests/data/stream/test_resume.py"
AUTO_LIMITS = ("tests/data/tools/test_stats.py::"
               "test_clip_seconds_auto_measures_only_the_clips_the_recipes_limits_let_through")
HF_TEXT = "tests/towers/test_hf_text.py::"
HF_WEIGHTS = "tests/towers/test_hf_image.py::test_weights_transformers_cannot_use_are_one_line_naming_the_file"
OC_HF_TOKENIZER = ("tests/towers/test_open_clip_towers.py::"
                   "test_an_hf_tokenizer_folder_that_is_missing_or_has_no_tokenizer_files_is_one_line")
RUN_ANYWHERE = ("tests/train/test_rundir.py::"
                "test_config_yaml_names_the_models_local_files_absolutely_so_the_run_loads_from_anywhere")
NAN_EMB = ("tests/bench/test_embed.py::"
           "test_a_nan_embedding_is_one_line_naming_the_sample_and_is_never_cached")
PART_BYTES = ("tests/retrieval/test_embed.py::"
              "test_a_part_whose_bytes_changed_keeping_its_size_is_named_when_read_and_redone_by_a_rerun")
FILTER_OUT = ("tests/retrieval/test_filter.py::test_an_out_that_holds_the_input_shards_or_two_inputs_of_one_"
              "name_are_refused_before_anything")
OC_PRETRAINED_TOKENIZER = ("tests/towers/test_open_clip_towers.py::"
                           "test_pretrained_folder_of_a_named_architecture_gives_its_tokenizer_without_the_hub")
EXPORT_TOKENIZER = ("tests/export/test_export.py::"
                    "test_an_export_carries_its_tokenizer_and_loads_moved_without_the_original")
TIMM_READ_ONCE = "tests/towers/test_timm_image.py::test_a_timm_weights_file_is_read_once"
OFFLINE_TOWER = ("tests/towers/test_open_clip_towers.py::"
                 "test_a_pretrained_tag_without_the_hub_takes_the_cached_file_or_is_one_line_at_once")
OFFLINE_BENCH = ("tests/bench/test_models.py::"
                 "test_an_open_clip_tag_without_the_hub_is_read_from_the_cache_by_its_tag_or_is_one_line")
FILE_TWO_GROUPS = ("tests/data/write/test_eval_sets.py::"
                   "test_a_val_rows_file_that_a_train_row_also_names_is_skipped_from_val_and_counted")
FILE_COPY = ("tests/data/write/test_eval_sets.py::"
             "test_a_val_rows_file_that_is_a_byte_copy_of_a_train_rows_file_is_skipped_counted_and_warned_of")
VS_COPY = VSP + "test_a_held_out_sample_whose_image_bytes_a_trained_sample_has_is_left_out_and_counted"
VSF_COPY = "tests/train/test_feed.py::test_carve_val_split_warns_of_held_out_samples_left_out_as_copies_of_trained_ones"
PROBE_NAMES = ("tests/bench/test_probe_tasks.py::"
               "test_probes_match_the_test_classes_to_the_train_classes_by_name")
TRAINABLE = "tests/bench/test_index.py::test_lists_or_centroids_more_than_the_gallery_rows_are_one_line"
RANK0_WATCHES = ("tests/train/test_guard.py::"
                 "test_rank0_waiting_on_the_others_ends_the_launch_when_one_is_stopped_and_not_before")
API_INPUTS = ("tests/test_model.py::"
              "test_what_users_pass_to_encode_and_tokenize_is_one_line_naming_the_argument")
SCIPY_RATE = ("tests/towers/test_audio.py::"
              "test_scipy_wavfiles_rate_data_order_and_a_bool_rate_are_one_line")
TRUNC = "tests/media/test_truncation.py"
CUT_EVERYWHERE = ("tests/data/tools/test_inspect.py::"
                  "test_a_cut_wav_aiff_or_mp3_is_skipped_as_a_cut_flac_is_in_every_reader")
IMG_MODES = "tests/media/test_image.py"
IMAGE_SIZE = "tests/test_model.py::test_an_image_batch_of_another_size_is_one_line_naming_both_shapes"
HF_IMAGE_SIZE = ("tests/towers/test_hf_image.py::"
                 "test_the_image_size_encode_image_takes_is_what_the_processor_makes")
OC_IMAGE_SIZE = "tests/bench/test_models.py::test_an_open_clip_models_image_size_is_what_its_transform_makes"
OC_API_INPUTS = ("tests/bench/test_models.py::"
                 "test_open_clip_models_refuse_what_align_models_refuse_in_one_line")
NORM_LIMITS = ("tests/data/tools/test_stats.py::"
               "test_norm_stats_measure_only_the_clips_the_recipes_limits_let_through")
TXT_VALUES = "tests/data/write/test_values.py::"
TXT_E2E = (TXT_VALUES +
           "test_jsonl_rows_with_lone_surrogates_are_skipped_and_a_line_separator_reaches_training_and_bench")
SURR_STREAM = "tests/data/stream/test_decode.py::test_a_caption_with_a_lone_surrogate_skips_its_sample_and_names_it"
TOWERS_AGREE = "tests/test_text.py::test_every_text_tower_refuses_a_lone_surrogate_with_the_same_line"
NOT_UTF8 = ("tests/data/write/test_shards.py::"
            "test_a_folder_whose_file_names_are_not_utf8_is_written_and_its_skips_recorded")
SNIPPET_SURROGATE = ("tests/export/test_onnx_format.py::"
                     "test_the_snippets_tokenize_refuses_a_lone_surrogate_as_align_does_for_every_tokenizer")
BOW_PUNCT = ("tests/towers/test_bow.py::"
             "test_punctuation_unicode_drops_every_punctuation_mark_and_the_default_keeps_its_reading")
LAUNCH_WARNS = ("tests/data/stream/test_sources.py::"
                "test_a_launch_warns_of_missing_and_too_few_shards_once_not_once_per_rank")
