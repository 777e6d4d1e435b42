import base64
import json
import time

import pytest

from governor.detectors import (
    IBAN_LENGTHS,
    Finding,
    find_cards,
    find_emails,
    find_health_ids,
    find_ibans,
    find_phones,
    find_secrets,
    find_ssns,
    iban_is_valid,
    is_valid_email,
    luhn_is_valid,
    nhs_number_is_valid,
    redact,
    scan,
)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


JWT = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': '42'})}.SflKxwRJSMeKKF2QT4fwpMeJf36P"
GITHUB_PAT = "github_pat_11ABCDEFG0123456789_abcdefXYZ"
GOOGLE_KEY = "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
PEM_HEADER = "-----BEGIN OPENSSH PRIVATE KEY-----"
GH_BODY = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
NOT_JWT = f"{_b64({'typ': 'x'})}.{_b64({'sub': '42'})}.SflKxwRJSMeKKF2QT4fwpMeJf36P"


def spans(findings: list[Finding], text: str) -> list[str]:
    return [text[f.start : f.end] for f in findings]


@pytest.mark.parametrize(
    ("detector", "text", "expected"),
    [
        # payment cards
        (find_cards, "pay with 4111 1111 1111 1111 today", ["4111 1111 1111 1111"]),
        (find_cards, "card 4111111111111111.", ["4111111111111111"]),
        (find_cards, "card 4111-1111-1111-1111 exp 12/27", ["4111-1111-1111-1111"]),
        (find_cards, "amex 3782 822463 10005", ["3782 822463 10005"]),
        (find_cards, "19 digits 6011 0000 0000 0000 001", ["6011 0000 0000 0000 001"]),
        (find_cards, "card 4111 1111 1111 1112", []),  # fails Luhn
        (find_cards, "0000 0000 0000 0000", []),  # passes Luhn, but a placeholder
        (find_cards, "order 411111111111", []),  # 12 digits
        (find_cards, "id 41111111111111110000", []),  # 20 digits
        (find_cards, "mixed 4111 1111-1111 1111", []),  # inconsistent separators
        # SSNs
        (find_ssns, "SSN 123-45-6789", ["123-45-6789"]),
        (find_ssns, "my ssn: 123456789", ["123456789"]),
        (find_ssns, "social security number 123 45 6789", ["123 45 6789"]),
        (find_ssns, "000-12-3456", []),
        (find_ssns, "666-12-3456", []),
        (find_ssns, "900-12-3456", []),
        (find_ssns, "123-00-4567", []),
        (find_ssns, "123-45-0000", []),
        (find_ssns, "078-05-1120", []),  # the Woolworth's wallet card
        (find_ssns, "order 123456789", []),  # undashed without SSN wording
        (find_ssns, "2024-01-15", []),
        # IBANs
        (find_ibans, "IBAN DE89 3704 0044 0532 0130 00 thanks", ["DE89 3704 0044 0532 0130 00"]),
        (find_ibans, "GB82WEST12345698765432", ["GB82WEST12345698765432"]),
        (find_ibans, "to fr1420041010050500013m02606.", ["fr1420041010050500013m02606"]),
        (find_ibans, "NL91ABNA0417164300", ["NL91ABNA0417164300"]),
        (find_ibans, "BE68539007547034", ["BE68539007547034"]),
        (find_ibans, "DE88 3704 0044 0532 0130 00", []),  # wrong check digits
        (find_ibans, "DE89 3704 0044 0532 0130 0012", []),  # too long for DE
        (find_ibans, "DE89 3704 0044 0532 0130 0", []),  # too short
        (find_ibans, "ZZ89370400440532013000", []),  # unknown country
        # e-mail
        (find_emails, "write to jane.doe+tag@example.co.uk.", ["jane.doe+tag@example.co.uk"]),
        (find_emails, "o'brien@mail.example.ie", ["o'brien@mail.example.ie"]),
        (find_emails, "user@localhost", []),
        (find_emails, "a..b@example.com", []),
        (find_emails, "user@-example.com", []),
        (find_emails, "@example.com", []),
        # phones
        (find_phones, "call +44 20 7946 0958 now", ["+44 20 7946 0958"]),
        (find_phones, "call +14155552671", ["+14155552671"]),
        (find_phones, "+1 (555) 123-4567", ["+1 (555) 123-4567"]),
        (find_phones, "office (555) 123-4567.", ["(555) 123-4567"]),
        (find_phones, "cell 555-123-4567", ["555-123-4567"]),
        (find_phones, "cell 555.123.4567", ["555.123.4567"]),
        (find_phones, "on 2024-01-15", []),
        (find_phones, "ref 5551234567", []),  # bare digits
        (find_phones, "+12345", []),  # too short for E.164
        (find_phones, "+1234567890123456", []),  # 16 digits
        (find_phones, "4111-1111-1111-1111", []),
        (find_phones, "555-123-4567-8901", []),
        # secrets
        (find_secrets, "key=sk_live_a1B2c3D4e5F6g7H8i9J0kL", ["sk_live_a1B2c3D4e5F6g7H8i9J0kL"]),
        (find_secrets, "sk_test_Zx9-Yw8_Vu7Ts6Rq5Po4Nm3", ["sk_test_Zx9-Yw8_Vu7Ts6Rq5Po4Nm3"]),
        (find_secrets, "sk_live_a1B2c3D4e5", []),  # too short
        (find_secrets, "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx", []),  # documentation placeholder
        (find_secrets, "sk-proj-Ab3dEf6hIj9kLmNoPqRsTuVw", ["sk-proj-Ab3dEf6hIj9kLmNoPqRsTuVw"]),
        (find_secrets, "sk-ant-api03-Ab3dEf6hIj9kLmNoPqRs", ["sk-ant-api03-Ab3dEf6hIj9kLmNoPqRs"]),
        (find_secrets, "sk-Ab3dEf6hIj9kLm", []),  # too short
        (find_secrets, "AKIAZ7K3M2Q9W4XR1TBV", ["AKIAZ7K3M2Q9W4XR1TBV"]),
        (find_secrets, "AKIAIOSFODNN7EXAMPL", []),  # 15 characters after AKIA
        (find_secrets, f"ghp_{GH_BODY}", [f"ghp_{GH_BODY}"]),
        (find_secrets, f"gho_{GH_BODY[:33]}", []),  # 33 characters
        (find_secrets, f"token {GITHUB_PAT}", [GITHUB_PAT]),
        (find_secrets, "xoxb-1234567890-abcdefghij", ["xoxb-1234567890-abcdefghij"]),
        (find_secrets, "xoxz-1234567890-abcdefghij", []),
        (find_secrets, f"key={GOOGLE_KEY}&q=1", [GOOGLE_KEY]),
        (find_secrets, GOOGLE_KEY[:-1], []),  # 34 after AIza
        (find_secrets, f"Bearer {JWT}", [JWT]),
        (find_secrets, NOT_JWT, []),  # header has no "alg"
        (find_secrets, f"{PEM_HEADER}\nb3Blbn", [PEM_HEADER]),
        (find_secrets, "-----BEGIN PUBLIC KEY-----", []),
        # health identifiers
        (find_health_ids, "MBI 1EG4-TE5-MK73", ["1EG4-TE5-MK73"]),
        (find_health_ids, "MBI 1EG4TE5MK73", ["1EG4TE5MK73"]),
        (find_health_ids, "MBI 1SG4-TE5-MK73", []),  # S is never used in an MBI
        (find_health_ids, "MRN: 00123456", ["00123456"]),
        (find_health_ids, "medical record number 4815-162342", ["4815-162342"]),
        (find_health_ids, "MRN: pending", []),
        (find_health_ids, "NHS number 943 476 5919", ["943 476 5919"]),
        (find_health_ids, "NHS no. 9434765919", ["9434765919"]),
        (find_health_ids, "NHS number 943 476 5918", []),  # fails mod 11
        (find_health_ids, "ref 943 476 5919", []),  # no NHS wording
        (find_health_ids, "Diagnosis: E11.9 (type 2 diabetes)", ["E11.9"]),
        (find_health_ids, "ICD-10 J45.909 recorded", ["J45.909"]),
        (find_health_ids, "Take the E11.9 exit", []),  # no diagnosis wording
    ],
)  # fmt: skip
def test_detector_golden_cases(detector, text, expected):
    assert spans(detector(text), text) == expected


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("79927398713", True), ("79927398710", False), ("12a4", False)],
)
def test_luhn(digits, valid):
    assert luhn_is_valid(digits) is valid


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013000", "FR1420041010050500013M02606", "GB82WEST12345698765432",
        "ES9121000418450200051332", "IT60X0542811101000000123456", "NL91ABNA0417164300",
        "BE68539007547034", "AT611904300234573201", "CH9300762011623852957",
        "IE29AIBK93115212345678", "PL61109010140000071219812874", "PT50000201231234567890154",
        "SE4550000000058398257466", "DK5000400440116243", "FI2112345600000785",
        "NO9386011117947", "LU280019400644750000",
    ],
)  # fmt: skip
def test_iban_examples_of_common_countries_validate(iban):
    assert IBAN_LENGTHS[iban[:2]] == len(iban)
    assert iban_is_valid(iban)


def _with_check_digits(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(ch, 36)) for ch in rearranged)) % 97
    return f"{country}{check:02d}{bban}"


def test_iban_with_valid_checksum_but_wrong_country_length_is_rejected():
    too_long = _with_check_digits("NO", "860111179470")  # NO IBANs have 15 characters
    assert len(too_long) == 16
    assert not iban_is_valid(too_long)
    assert iban_is_valid(_with_check_digits("NO", "86011117947"))


@pytest.mark.parametrize(
    ("number", "valid"),
    [("9434765919", True), ("4010232137", True), ("9434765918", False), ("943476591", False)],
)
def test_nhs_number_check(number, valid):
    assert nhs_number_is_valid(number) is valid


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("jane@example.com", True),
        ("first.last+tag@sub.example.org", True),
        ("jane@example", False),
        ("jane@@example.com", False),
        (".jane@example.com", False),
        ("jane@exa_mple.com", False),
        ("a" * 65 + "@example.com", False),
    ],
)
def test_is_valid_email(address, valid):
    assert is_valid_email(address) is valid


def test_private_key_block_is_detected_whole():
    text = "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAA\n-----END RSA PRIVATE KEY-----\nbye"
    [finding] = find_secrets(text)
    assert text[finding.start : finding.end].endswith("-----END RSA PRIVATE KEY-----")


def test_scan_keeps_the_more_specific_kind_on_overlap():
    text = "NHS number 943 476 5919 and IBAN GB82 WEST 1234 5698 7654 32"
    assert [f.kind for f in scan(text)] == ["health_id", "iban"]


def test_scan_reports_every_kind_in_position_order():
    text = "a@b.io 4111111111111111 123-45-6789 +14155552671 AKIAZ7K3M2Q9W4XR1TBV"
    assert [f.kind for f in scan(text)] == ["email", "card", "ssn", "phone", "secret"]


def test_redact_replaces_spans_with_their_kind():
    text = "card 4111111111111111, mail a@b.io"
    assert redact(text, scan(text)) == "card [REDACTED:card], mail [REDACTED:email]"


def test_redact_merges_overlapping_spans():
    text = "0123456789"
    findings = [Finding("phone", 4, 8), Finding("card", 2, 6), Finding("ssn", 9, 10)]
    assert redact(text, findings) == "01[REDACTED:card]8[REDACTED:ssn]"


def test_redact_without_findings_returns_text_unchanged():
    assert redact("nothing here", []) == "nothing here"


def test_detectors_stay_fast_on_adversarial_input():
    text = ("1234 " * 5000) + ("a" * 20000) + "@" + ("+1-" * 3000) + ("eyJ" + "a" * 5000 + ".") * 3
    started = time.monotonic()
    scan(text)
    assert time.monotonic() - started < 2.0


# --- SEPA IBANs, new secret formats, e-mail look-alikes ----------------------------------

# One valid IBAN per SEPA country (EU/EEA, CH, GB, MC, SM, VA, AD, AL, ME, MD, MK, RS).
SEPA_IBANS = [
    "AD1200012030200359100100", "AL47212110090000000235698741", "AT611904300234573201",
    "BE68539007547034", "BG80BNBG96611020345678", "CH9300762011623852957",
    "CY17002001280000001200527600", "CZ6508000000192000145399", "DE89370400440532013000",
    "DK5000400440116243", "EE382200221020145685", "ES9121000418450200051332",
    "FI2112345600000785", "FR1420041010050500013M02606", "GB29NWBK60161331926819",
    "GI75NWBK000000007099453", "GR1601101250000000012300695", "HR1210010051863000160",
    "HU42117730161111101800000000", "IE29AIBK93115212345678", "IS140159260076545510730339",
    "IT60X0542811101000000123456", "LI21088100002324013AA", "LT121000011101001000",
    "LU280019400644750000", "LV80BANK0000435195001", "MC5811222000010123456789030",
    "MD24AG000225100013104168", "ME25505000012345678951", "MK07250120000058984",
    "MT84MALT011000012345MTLCAST001S", "NL91ABNA0417164300", "NO9386011117947",
    "PL61109010140000071219812874", "PT50000201231234567890154", "RO49AAAA1B31007593840000",
    "RS35260005601001611379", "SE4550000000058398257466", "SI56263300012039086",
    "SK3112000000198742637541", "SM86U0322509800000000270100", "VA59001123000012345678",
]  # fmt: skip


@pytest.mark.parametrize("iban", SEPA_IBANS, ids=lambda i: i[:2])
def test_every_sepa_country_iban_is_found_grouped_or_not(iban):
    grouped = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    assert spans(find_ibans(f"pay to {iban} now"), f"pay to {iban} now") == [iban]
    assert spans(find_ibans(f"IBAN: {grouped}."), f"IBAN: {grouped}.") == [grouped]
    # One changed digit breaks the mod-97 check.
    broken = iban[:-1] + str((int(iban[-1], 36) + 1) % 10)
    assert find_ibans(broken) == []


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("DATABASE_URL=postgres://app:Xk9mQ2vLr7@db.internal:5432/app", "app:Xk9mQ2vLr7"),
        ("redis://:Qm7vX2pL9sKw@cache:6379/0", ":Qm7vX2pL9sKw"),
        (
            "https://hooks.slack.com/services/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",
            "https://hooks.slack.com/services/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",
        ),
        ("npm_aB3dE6gH9jK2mN5pQ8sT1vW4yZ7aB3dE6gH9", "npm_aB3dE6gH9jK2mN5pQ8sT1vW4yZ7aB3dE6gH9"),
        (
            "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",
            "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",
        ),
        ("key rk_live_51H8xYzAbCdEfGhIjKlMnOpQr", "rk_live_51H8xYzAbCdEfGhIjKlMnOpQr"),
        ("glpat-xYz12AbC34dEf56GhI78jK", "glpat-xYz12AbC34dEf56GhI78jK"),
        ("SK2b7e5f1c9a8d4e3f6b0c1d2e3f4a5b6c", "SK2b7e5f1c9a8d4e3f6b0c1d2e3f4a5b6c"),
        ("password=Summer2024!", "Summer2024!"),
        ('"client_secret": "3vN8qL2mX7kP9wR4tY6u"', "3vN8qL2mX7kP9wR4tY6u"),
        ("DB_PASSWORD='k3#Lq9!vRz'", "k3#Lq9!vRz"),
        (
            "Authorization: Bearer 9f8e7d6c5b4a3F2E1D0c9B8a7f6e5d4c",
            "9f8e7d6c5b4a3F2E1D0c9B8a7f6e5d4c",
        ),
    ],
)
def test_new_secret_formats_are_found(text, secret):
    assert spans(find_secrets(text), text) == [secret]


@pytest.mark.parametrize(
    "text",
    [
        "DATABASE_URL=postgres://user:pass@host:5432/db",
        "amqp://guest:guest@localhost:5672/",
        "password=changeme and token=abcdefgh",
        "secret: mysecretvalue",
        "api_key = os.environ['API_KEY']",
        "password: <your password> or ${DB_PASSWORD}",
        "sk-proj-your-api-key-goes-here",
        "OPENAI_API_KEY=sk-...",
        "AKIAIOSFODNN7EXAMPLE",  # AWS's documented example
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    ],
)
def test_placeholders_and_look_alikes_are_not_secrets(text):
    assert find_secrets(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "postgres://user:password@db.example.com/app",
        "git clone git@github.com:acme/api.git",
        "ssh://git@gitlab.example.com:2222/platform/api.git",
        "scp me@host.example.com:/tmp/x .",
    ],
)
def test_url_credentials_and_ssh_remotes_are_not_email_addresses(text):
    assert find_emails(text) == []


@pytest.mark.parametrize(
    "text",
    ["write to jane@example.com: she knows", "mailto:jane@example.com", "(jane@example.com)"],
)
def test_addresses_next_to_a_colon_are_still_addresses(text):
    assert spans(find_emails(text), text) == ["jane@example.com"]
