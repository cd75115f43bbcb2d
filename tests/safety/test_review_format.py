"""Review formats: a Label Studio export of any unexpected shape is refused whole, naming the task."""

import json

import pytest

from shoplens.safety.review_format import FROM_NAME, ReviewFormatError, labels_from_label_studio

CATEGORIES = ["sexual", "violence"]


def export(annotation: dict) -> str:
    return json.dumps(
        [
            {
                "data": {"item_id": "fine"},
                "annotations": [
                    {
                        "updated_at": "2026-01-01T00:00:00Z",
                        "result": [{"from_name": FROM_NAME, "type": "choices", "value": {"choices": ["none"]}}],
                    }
                ],
            },
            {"data": {"item_id": "odd"}, "annotations": [annotation]},
        ]
    )


def region(value) -> dict:
    return {"from_name": FROM_NAME, "type": "choices", "value": value}


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ({"result": ["violence"]}, "a result region is str, not an object"),
        ({"result": [region(["violence"])]}, "a choices region's value is list, not an object"),
        ({"result": [region({"choices": [{"value": "violence"}]})]}, "a choice is {'value': 'violence'}, not a category name"),
        ({"result": [region({"choices": "violence"})]}, "value.choices is str, not a list"),
        (
            {"updated_at": 1767225600, "result": [region({"choices": ["violence"]})]},
            "updated_at/created_at 1767225600 is not an ISO 8601 time",
        ),
        ({"result": {"choices": ["violence"]}}, "result is dict, not a list"),
    ],
    ids=["string-region", "list-value", "dict-choice", "string-choices", "integer-updated-at", "dict-result"],
)
def test_an_export_of_an_unexpected_shape_is_refused_naming_the_task(annotation, reason):
    with pytest.raises(ReviewFormatError) as refused:
        labels_from_label_studio(export(annotation), CATEGORIES)
    assert str(refused.value) == f"task 1 (odd): {reason}"


@pytest.mark.parametrize("annotations", ["none", {"result": []}, ["not an annotation"]])
def test_annotations_that_are_not_a_list_of_objects_are_refused(annotations):
    text = json.dumps([{"data": {"item_id": "odd"}, "annotations": annotations}])
    with pytest.raises(ReviewFormatError, match=r"^task 0 \(odd\): "):
        labels_from_label_studio(text, CATEGORIES)


def test_a_well_formed_export_still_reads():
    labels = labels_from_label_studio(export({"result": [region({"choices": ["violence"]})]}), CATEGORIES)
    assert {(label.item_id, label.category, label.violating) for label in labels} == {
        ("fine", "sexual", False),
        ("fine", "violence", False),
        ("odd", "sexual", False),
        ("odd", "violence", True),
    }


def annotated(*annotations) -> str:
    return json.dumps([{"data": {"item_id": "a"}, "annotations": list(annotations)}])


def chose(choice: str, **fields) -> dict:
    return {"result": [region({"choices": [choice]})], **fields}


def test_the_latest_annotation_is_found_across_time_zones():
    # 10:00 at +05:00 is 05:00 UTC, before 06:00 UTC: the `none` made at 06:00 is the decision.
    text = annotated(chose("sexual", updated_at="2026-01-01T10:00:00+05:00"), chose("none", updated_at="2026-01-01T06:00:00Z"))
    assert not any(label.violating for label in labels_from_label_studio(text, CATEGORIES))


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        (chose("sexual", was_cancelled="false"), "was_cancelled is 'false', not true or false"),
        (chose("sexual", updated_at="yesterday"), "updated_at/created_at 'yesterday' is not an ISO 8601 time"),
        (chose("sexual", completed_by={"email": {"x": 1}}), "completed_by {'x': 1} is not a user id or email"),
    ],
)
def test_annotation_fields_of_the_wrong_kind_are_refused(annotation, reason):
    with pytest.raises(ReviewFormatError) as refused:
        labels_from_label_studio(annotated(annotation), CATEGORIES)
    assert str(refused.value) == f"task 0 (a): {reason}"


def test_json_nested_too_deeply_is_refused_not_a_crash():
    with pytest.raises(ReviewFormatError, match="nested too deeply"):
        labels_from_label_studio("[" * 200_000, CATEGORIES)
