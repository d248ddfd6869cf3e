"""Numbers, money, dates, times and units -> the words a person says, where espeak-ng's own reading is wrong.

Used by export/contract/text_normalize.py. What espeak reads well is left as digits (it says "1,234", "3.5",
"-5", "22nd", "10:30", "2024" correctly); rules rewrite only the cases listed in text_normalize's docstring,
mostly into digits plus words ("$3.50" -> "3 dollars and 50 cents") that espeak then reads.
"""
from __future__ import annotations

import re

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_TENS_PLURAL = ["", "tens", "twenties", "thirties", "forties", "fifties", "sixties", "seventies", "eighties",
                "nineties"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"  # 1,234.5


def words_0_99(n: int) -> str:
    """0..99 in words ("ninety five")."""
    if not 0 <= n < 100:
        raise ValueError(f"{n} is not in 0..99")
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])


def year_words(year: int) -> str:
    """A year 1000..1999 as said: 1990 "nineteen ninety", 1905 "nineteen oh five", 1900 "nineteen hundred"."""
    hi, lo = divmod(year, 100)
    if not 10 <= hi <= 19:
        raise ValueError(f"{year} is not in 1000..1999")
    if lo == 0:
        return words_0_99(hi) + " hundred"
    return words_0_99(hi) + (" oh " if lo < 10 else " ") + words_0_99(lo)


def _ordinal_suffix(day: int) -> str:
    return "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _date(year: int, month: int, day: int) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return f"{_MONTHS[month - 1]} {day}{_ordinal_suffix(day)}, {year}"


# --------------------------------------------------------------------------- before punctuation rewriting

def degrees(text: str) -> str:
    """"25°C" -> "25 degrees Celsius", "90°" -> "90 degrees" (espeak: "degrees C")."""
    text = text.replace("℃", "°C").replace("℉", "°F")

    def unit(m: re.Match) -> str:
        n, scale = m.group(1), {"C": " Celsius", "F": " Fahrenheit", "K": " Kelvin"}.get(m.group(2) or "", "")
        return f"{n} {'degree' if n in ('1', '-1') else 'degrees'}{scale}"

    text = re.sub(rf"(?<![\d.,])(-?{_NUM})\s?°\s?([CFK]\b)?", unit, text)
    return text.replace("°", " degrees")


_PHONE = re.compile(r"(?<![\d\w])(?:\+?1[-. ])?\(?(\d{3})\)?[-. ]?(\d{3})[-.](\d{4})(?!\d)")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_US_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")
_RANGE = re.compile(rf"(?<![\w.,:/-])({_NUM})\s?[-–]\s?({_NUM})(?![\d/]|[.,]\d|\s?[-–]\s?\d)")
_OUT_OF = re.compile(r"(?<![\w./])(\d+(?:\.\d+)?)/(5|10|100)(?![\d/])")
_FRACTION = re.compile(r"(?<![\w./])([1-9])/([2-9])(?![\d/])")
_FRACTION_NAMES = {2: ("half", "halves"), 3: ("third", "thirds"), 4: ("quarter", "quarters"),
                   5: ("fifth", "fifths"), 6: ("sixth", "sixths"), 7: ("seventh", "sevenths"),
                   8: ("eighth", "eighths"), 9: ("ninth", "ninths")}


def _out_of(m: re.Match) -> str:
    return f"{m.group(1)} out of {m.group(2)}" if float(m.group(1)) <= int(m.group(2)) else m.group(0)


def _fraction(m: re.Match) -> str:
    n, d = int(m.group(1)), int(m.group(2))
    if n >= d:
        return m.group(0)
    return f"{n} {_FRACTION_NAMES[d][0 if n == 1 else 1]}"


def before_punctuation(text: str) -> str:
    """Phone numbers, dates, ranges and fractions: the patterns that contain "-", "–" or "/"."""
    text = _PHONE.sub(lambda m: ", ".join(" ".join(g) for g in m.groups()), text)
    text = _ISO_DATE.sub(lambda m: _date(int(m.group(1)), int(m.group(2)), int(m.group(3))) or m.group(0), text)
    text = _US_DATE.sub(lambda m: _date(int(m.group(3)), int(m.group(1)), int(m.group(2))) or m.group(0), text)
    text = re.sub(r"\b24/7\b", "24 7", text)
    text = _OUT_OF.sub(_out_of, text)
    text = _FRACTION.sub(_fraction, text)
    return _RANGE.sub(r"\1 to \2", text)


# --------------------------------------------------------------------------- money, scales, units, times, years

_CURRENCIES = {  # symbol or code -> (one, many, cent, cents)
    "$": ("dollar", "dollars", "cent", "cents"), "USD": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"), "EUR": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"), "GBP": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "", ""), "JPY": ("yen", "yen", "", ""),
    "₹": ("rupee", "rupees", "paisa", "paise"), "INR": ("rupee", "rupees", "paisa", "paise"),
}
_SCALES = {"k": "thousand", "K": "thousand", "thousand": "thousand", "M": "million", "m": "million",
           "mn": "million", "million": "million", "B": "billion", "b": "billion", "bn": "billion",
           "billion": "billion", "T": "trillion", "trillion": "trillion"}
_SCALE = r"(?:(k|K|M|m|mn|B|b|bn|T)\b|\s(thousand|million|billion|trillion)\b)?"
_MONEY_BEFORE = re.compile(rf"(?<![\w])(?:US|A|C)?([$€£¥₹])\s?({_NUM}){_SCALE}")
_MONEY_AFTER = re.compile(rf"(?<![\w.,])({_NUM}){_SCALE}\s?(€|£|USD|EUR|GBP|JPY|INR)(?!\w)")


def _money(symbol: str, amount: str, scale: str | None) -> str:
    one, many, cent, cents = _CURRENCIES[symbol]
    if scale:
        return f"{amount} {_SCALES[scale]} {many}"
    whole, _, frac = amount.partition(".")
    if frac and len(frac) == 2 and cent:
        w, c = int(whole.replace(",", "") or 0), int(frac)
        cents_words = f"{c} {cent if c == 1 else cents}"
        if w == 0:
            return cents_words
        unit = one if w == 1 else many
        return f"{whole} {unit}" + (f" and {cents_words}" if c else "")
    return f"{amount} {one if amount == '1' else many}"


_SCALE_ALONE = re.compile(r"(?<![\w.,])(\d+(?:\.\d+)?)(k|K|M|B|bn)\b")
_ORDINAL_ROUND = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)th\b")
_DECADE = re.compile(r"(?<![\w'])(1[0-9]|20)([0-9]0)'?s\b")
_SHORT_DECADE = re.compile(r"(?:(?<=\s)|^)'?([1-9]0)'?s\b")
_YEAR = re.compile(r"(?<![\w$€£¥₹.,:/-])(1[1-9]\d\d)(?![\w%]|[.,:]\d|\s?(?:percent|%))")
# a 4-digit number is read as a year after one of these words, a month or a day ("May 5th, 1990"), or when it
# opens a line; elsewhere ("1234 people") espeak reads it as a quantity
_YEAR_WORDS = ["in", "since", "from", "by", "until", "till", "of", "year", "around", "circa", "before", "after",
               "during", "early", "late", "mid", "to", "and", "or", "through", "between", "the", "summer", "winter",
               "spring", "fall", "autumn"]
_YEAR_CONTEXT = re.compile(rf"(?:\b(?:{'|'.join(_YEAR_WORDS + _MONTHS)})|\d(?:st|nd|rd|th),?)\s+$|^\s*$",
                           re.IGNORECASE)
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])(\s?(?:[ap]\.?m\.?|[AP]\.?M\.?)(?!\w))?")
_TIMES = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)x\b")
_BY = re.compile(r"(?<![\w.])(\d+)\s?x\s?(\d+)\b")
# unit -> (singular, plural); case-sensitive, read only right after a number
_UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "nm": ("nanometer", "nanometers"), "mi": ("mile", "miles"),
    "ft": ("foot", "feet"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"), "mph": ("mile per hour", "miles per hour"),
    "km/h": ("kilometer per hour", "kilometers per hour"), "kph": ("kilometer per hour", "kilometers per hour"),
    "m/s": ("meter per second", "meters per second"), "km/s": ("kilometer per second", "kilometers per second"),
    "ms": ("millisecond", "milliseconds"),
    "sec": ("second", "seconds"), "secs": ("second", "seconds"), "min": ("minute", "minutes"),
    "mins": ("minute", "minutes"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "KB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"), "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"), "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"), "GHz": ("gigahertz", "gigahertz"), "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"), "ml": ("milliliter", "milliliters"),
    "mL": ("milliliter", "milliliters"),
}
_UNIT_NAMES = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_UNIT = re.compile(rf"(?<![\w.,])({_NUM})\s?({_UNIT_NAMES})(?![\w/])")


def _round_ordinal(m: re.Match) -> str:
    """100th -> "1 hundredth" (espeak: "one hundred th"); other ordinals are left to espeak."""
    n = int(m.group(1).replace(",", ""))
    for scale, word in ((10 ** 9, "billionth"), (10 ** 6, "millionth"), (1000, "thousandth"), (100, "hundredth")):
        if n and n % scale == 0:
            return f"{n // scale} {word}"
    return m.group(0)


def _decade(m: re.Match) -> str:
    hi, lo = int(m.group(1)), int(m.group(2))
    if hi == 20 and lo == 0:
        return "two thousands"
    if lo == 0:
        return words_0_99(hi) + " hundreds"
    return words_0_99(hi) + " " + _TENS_PLURAL[lo // 10]


def _time(m: re.Match) -> str:
    h, mm, ampm = int(m.group(1)), m.group(2), m.group(3) or ""
    if mm == "00":
        if ampm:
            return f"{h}{ampm}"
        return f"{h} o'clock" if 1 <= h <= 12 else f"{h} hundred"
    if mm[0] == "0":
        return f"{h} oh {mm[1]}{ampm}"
    return m.group(0)


def _year(m: re.Match) -> str:
    before = m.string[max(0, m.start() - 24): m.start()].rsplit("\n", 1)[-1]
    if int(m.group(1)) % 100 == 0 or _YEAR_CONTEXT.search(before):
        return year_words(int(m.group(1)))
    return m.group(0)


def _unit(m: re.Match) -> str:
    one, many = _UNITS[m.group(2)]
    return f"{m.group(1)} {one if m.group(1) == '1' else many}"


def numbers(text: str) -> str:
    """Money, scale suffixes, round ordinals, decades, units, years, times and multipliers (in that order)."""
    text = _MONEY_BEFORE.sub(lambda m: _money(m.group(1), m.group(2), m.group(3) or m.group(4)), text)
    text = _MONEY_AFTER.sub(lambda m: _money(m.group(4), m.group(1), m.group(2) or m.group(3)), text)
    text = _SCALE_ALONE.sub(lambda m: m.group(0) if m.group(2) == "K" and float(m.group(1)) < 10
                            else f"{m.group(1)} {_SCALES[m.group(2)]}", text)  # 4K/8K: video resolutions
    text = _ORDINAL_ROUND.sub(_round_ordinal, text)
    text = _DECADE.sub(_decade, text)
    text = _SHORT_DECADE.sub(lambda m: _TENS_PLURAL[int(m.group(1)) // 10], text)
    text = _UNIT.sub(_unit, text)
    text = _YEAR.sub(_year, text)
    text = _TIME.sub(_time, text)
    text = _BY.sub(r"\1 by \2", text)
    return _TIMES.sub(r"\1 times", text)
