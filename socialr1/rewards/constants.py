"""Constants of the reward definitions, shared by the vectorized scorers and by the independent
per-sample reference in tests/ (which shares nothing else with them): what a word is made of, how
words are hashed, the word lists."""

HASH_MOD = 2**31 - 1  # keys live in [0, HASH_MOD); HASH_MOD itself is free to pad sorted key sets
CHAR_BASE = 131
CHAR_CODE = {c: i + 1 for i, c in enumerate("0123456789abcdefghijklmnopqrstuvwxyz")} | {
    c: i + 11 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
}  # word characters (ASCII letters, digits), case-folded; small codes keep prefix sums of code * CHAR_BASE**pos small
NGRAM_BASE = 1_000_003
WHITESPACE = " \t\n\r\x0b\x0c"  # ASCII whitespace: the only whitespace either definition knows
SENTENCE_END = ".!?\"'"  # a capitalised word right after one of these is not taken for a name

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them themselves
    then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves s t d ll m re ve
    don didn doesn isn wasn weren won wouldn couldn shouldn""".split()
)
MENTAL_WORDS = frozenset(
    """believe believes believed believing belief beliefs think thinks thinking thought thoughts
    know knows knew known knowing knowledge unaware aware realize realizes realized notice notices
    noticed expect expects expected expectation assume assumes assumed suppose supposes remember
    remembers remembered forget forgets forgot mistaken false feel feels felt feeling feelings
    emotion emotions happy sad angry upset afraid scared worried surprised disappointed embarrassed
    proud jealous grateful hurt confused relieved nervous annoyed want wants wanted wish wishes
    wished hope hopes hoped desire desires intend intends intended intention intentions intent goal
    goals plan plans planned prefer prefers pretend pretends pretended lie lies lied joke joking
    sarcastic sarcasm polite mean means meant perspective""".split()
)
REASONING_WORDS = frozenset(
    """option options answer question story character characters therefore likely unlikely correct
    incorrect best fits consistent inconsistent contradicts supports evidence seems implies suggests
    infer inferred reason""".split()
)
