"""Final answers read from realistic responses (presets and regexes), compared as numbers, and replaced."""
import pytest

from stages.answers import as_number, extract_answer, normalized, replace_answer, same_answer, wrong_number
from stages.scoring import agreement

GSM8K = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
         "April and May.\n#### 1,000")
MATH = "The probability is $\\frac{1}{2}$, so the answer is $\\boxed{\\frac{1}{2}}$."
GYM = "<think>3 + 4 is 7, minus 2</think>\n<answer> 5 </answer>"


@pytest.mark.parametrize("pattern,text,answer", [
    ("gsm8k", GSM8K, "1,000"),
    ("gsm8k", "#### 3\nno wait\n#### $18", "$18"),             # the last marked answer counts
    ("boxed", MATH, "\\frac{1}{2}"),                            # stays text, nested braces kept
    ("boxed", "\\boxed{3} hmm, no: \\boxed{4}", "4"),
    ("last_number", "48/2 = 24, and 48 + 24 = 72 clips.", "72"),
    ("last_number", "It costs -3.50 dollars", "-3.50"),
    ("answer_tag", GYM, "5"),
    ("answer_tag", "<answer>first</answer> then <answer>\nsecond line\n</answer>", "second line"),
    ("hash", "3+4=7,7-2=5#5", "5"),
    (r"Answer:\s*(\w+)", "Answer: Paris. Answer: Rome", "Paris"),  # a regex: its first match
])
def test_presets_read_realistic_responses(pattern, text, answer):
    assert extract_answer(pattern, text) == answer


@pytest.mark.parametrize("pattern,text", [
    ("gsm8k", "72 clips"), ("boxed", "the answer is 1/2"), ("last_number", "no digits here"),
    ("answer_tag", "<answer>5"), ("hash", "7-2=5"),
])
def test_no_final_answer_is_none(pattern, text):
    assert extract_answer(pattern, text) is None


def test_numbers_compare_as_numbers_and_text_as_text():
    assert same_answer("42.0", "42") and same_answer("1,000", "1000") and same_answer("$18", "18")
    assert same_answer("42.", "42") and same_answer(" 7 ", "7")
    assert not same_answer("-3", "3") and not same_answer("41", "42")
    assert same_answer("Paris", "paris ") and not same_answer("\\frac{1}{2}", "0.5")
    assert not same_answer(None, "3") and not same_answer("3", None)
    assert as_number("1,000") == 1000.0 and as_number("$3.50") == 3.5 and as_number("\\frac{1}{2}") is None


def test_normalized_keys_agree_with_same_answer():
    assert normalized("1,000") == normalized("1000.0") == normalized("1000") == "1000"
    assert normalized("2.50") == normalized("2.5") and normalized(" Paris") == "paris"
    assert normalized("-3") != normalized("3") and normalized(None) is None


def test_replace_answer_swaps_only_the_final_answer_span():
    assert replace_answer("gsm8k", GSM8K, "999") == GSM8K.replace("#### 1,000", "#### 999")
    assert replace_answer("answer_tag", GYM, "6") == GYM.replace("<answer> 5 </answer>", "<answer> 6 </answer>")
    assert replace_answer("boxed", MATH, "1") == MATH.replace("\\boxed{\\frac{1}{2}}", "\\boxed{1}")
    assert replace_answer("last_number", "24 then 72 clips", "70") == "24 then 70 clips"
    assert replace_answer("hash", "3+4=7#7 and #9", "8") == "3+4=7#8 and #9"  # hash reads the first match
    assert replace_answer("gsm8k", "no answer here", "3") is None


def test_wrong_numbers_keep_the_references_format():
    assert wrong_number("42", 1) == "43" and wrong_number("42", -2) == "40"
    assert wrong_number("1,000", 2) == "1,002" and wrong_number("$3.50", 1) == "$4.50"
    assert wrong_number("0.25", -1) == "-0.75" and wrong_number("Paris", 1) is None
    assert not same_answer(wrong_number("7", 3), "7")


def test_solve_agreement_counts_equal_numbers_as_one_answer():
    judge = ["1,000", "1000.0", "7", "7", "1000"]
    assert agreement("1000", judge, "majority") == 1.0     # 1,000 / 1000.0 / 1000 are one answer, three votes
    assert agreement("$1,000", judge, "share") == pytest.approx(0.6)
    assert agreement("7.0", judge, "share") == pytest.approx(0.4)
    assert agreement("7", judge, "majority") == 0.0
