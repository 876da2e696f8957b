"""Closed word classes and small lexicons the verifier reads (English; data, no logic beyond building maps).

Kept apart from :mod:`llmcache.proxy.semantic.verify` so the checks read as checks. Every list
is general English (function words, polar pairs, units, modal and quantifier classes,
answer-shape words), never words picked from one benchmark pair.
"""

from __future__ import annotations

import functools

STOPWORDS = frozenset(["a", "an", "the", "this", "that", "these", "those", "there", "here", "it", "its", "it's", "i", "me", "my", "mine", "we", "us", "our", "you", "your", "yours", "he", "him", "his", "she", "her", "they", "them", "their", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "doing", "done", "have", "has", "had", "having", "will", "would", "shall", "should", "can", "could", "may", "might", "must", "of", "at", "as", "and", "or", "but", "if", "then", "than", "so", "such", "too", "very", "just", "also", "only", "even", "about", "which", "what", "whats", "who", "whom", "whose", "where", "when", "why", "how", "whether", "while", "any", "some", "each", "every", "all", "both", "either", "one", "ones", "thing", "things", "something", "anything", "someone", "anybody", "somebody", "please", "pls", "kindly", "hi", "hello", "hey", "thanks", "thank", "tell", "give", "show", "let", "lets", "help", "need", "want", "wanted", "like", "would", "i'd", "i'm", "im", "i've", "ive", "you're", "youre", "know", "way", "ways", "best", "good", "great", "possible", "simple", "simply", "quick", "quickly", "easy", "easily", "exactly", "actually", "really", "basically", "generally", "typically", "usually", "properly", "correctly", "go", "get", "got", "sure", "many", "much", "question", "answer", "mean", "means", "meaning", "between", "among", "via", "per", "using", "use", "used", "s", "t", "role", "purpose", "main", "primary", "key", "basic", "command", "effectively", "efficiently", "take", "city", "wondering", "wonder", "bother", "sorry", "cheers", "advance", "curious", "anyone", "ok", "okay", "right", "now", "currently", "current", "exactly", "roughly", "approximately", "actual", "actually", "lot", "lots", "true", "definition", "definitions", "located", "location", "situated", "shortcut", "press", "keyboard", "tip", "tips", "advice", "local", "mechanism"])

# Words that carry polarity: kept out of the stop-list so the antonym check sees them.
ANTONYM_PAIRS = """
on off|up down|in out|inside outside|into out|above below|over under|before after|with without|for against
more less|most least|more fewer|increase decrease|increase reduce|raise lower|rise fall|higher lower|high low
max min|maximum minimum|maximize minimize|largest smallest|biggest smallest|big small|large small|long short
longest shortest|tall short|wide narrow|thick thin|heavy light|fast slow|faster slower|fastest slowest|quick slow
early late|earlier later|first last|start stop|start end|begin end|beginning end|open close|opened closed
enable disable|enabled disabled|activate deactivate|turn_on turn_off|show hide|lock unlock|connect disconnect
mount unmount|install uninstall|add remove|add delete|insert delete|create delete|create destroy|include exclude
import export|upload download|encrypt decrypt|encode decode|compress decompress|zip unzip|push pull|send receive
buy sell|import export|lend borrow|give take|win lose|won lost|winner loser|pass fail|accept reject|allow deny
allow block|allow forbid|legal illegal|valid invalid|true false|right wrong|correct incorrect|positive negative
pros cons|advantage disadvantage|advantages disadvantages|benefit risk|benefits risks|best worst|better worse
good bad|hot cold|warm cool|warm cold|heat cool|wet dry|full empty|rich poor|cheap expensive|cheaper pricier
safe dangerous|safe unsafe|healthy unhealthy|strong weak|hard soft|hard easy|difficult easy|simple complex
light dark|bright dark|black white|day night|north south|east west|left right|top bottom|front back|upper lower
inner outer|internal external|public private|local remote|local global|input output|read write|get set
horizontal vertical|ascending descending|asc desc|increasing decreasing|forward backward|forwards backwards
import export|love hate|like dislike|agree disagree|always never|all none|everything nothing|present absent
male female|men women|man woman|boy girl|husband wife|father mother|son daughter|brother sister|king queen
alive dead|live die|birth death|born died|young old|new old|newer older|newest oldest|modern ancient
past future|yesterday tomorrow|before after|previous next|old new|odd even|major minor|plus minus|add subtract
multiply divide|sum difference|profit loss|gain loss|credit debit|income expense|asset liability|bull bear
bullish bearish|inhale exhale|sunrise sunset|freeze melt|freezing boiling|upstream downstream|uppercase lowercase
upper lower|client server|sender receiver|encrypting decrypting|compile decompile|serialize deserialize|mute unmute
follow unfollow|subscribe unsubscribe|like unlike|pin unpin|archive unarchive|block unblock|approve deny|approve reject
bigger smaller|larger smaller|older younger|taller shorter|longer shorter|heavier lighter|harder easier|stronger weaker
hotter colder|warmer cooler|richer poorer|fast slowly|quickly slowly|fast slow|safer riskier|better worse|more less
cheapest priciest|oldest youngest|tallest shortest|heaviest lightest|strongest weakest|hottest coldest|easiest hardest
""".replace("\n", "|").split("|")

ANTONYMS: dict[str, set[str]] = {}
for _pair in ANTONYM_PAIRS:
    _words = _pair.split()
    if len(_words) == 2:
        _a, _b = _words
        ANTONYMS.setdefault(_a, set()).add(_b)
        ANTONYMS.setdefault(_b, set()).add(_a)

# Polar function words: compared by the antonym check only, never as content (their presence varies freely).
FUNCTION_POLAR = frozenset(["on", "off", "up", "down", "in", "out", "into", "inside", "outside", "above", "below", "over", "under", "before", "after", "with", "without", "for", "against", "more", "less", "most", "least", "fewer"])

NEGATIONS = frozenset(["not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot", "nowhere", "n't", "except", "excluding"])

# Operations a prompt asks for; only the class matters ("summarise" ≡ "tl;dr", "explain" ≡ a plain question).
TASK_CLASSES: dict[str, str] = {}
for _cls, _words_s in {
    "explain": "explain explanation describe description define definition clarify elaborate overview "
               "understand list enumerate name",
    "summarize": "summarize summary summarization tldr recap condense gist abstract synopsis",
    "translate": "translate translation",
    "analyze": "analyze analysis evaluate evaluation assess assessment examine critique interpret breakdown",
    "review": "review feedback proofread grade score rate",
    "write": "write compose draft generate create produce design devise",
    "rewrite": "rewrite rephrase paraphrase reword shorten simplify expand lengthen edit",
    "compare": "compare comparison contrast versus vs",
    "classify": "classify categorize categorise label tag",
    "extract": "extract pull",
    "fix": "fix debug troubleshoot repair resolve solve correct",
    "optimize": "optimize optimise improve",
    "test": "test tests unittest",
    "outline": "outline plan",
    "calculate": "calculate compute count",
    "pronounce": "pronounce pronunciation spell",
    "predict": "predict forecast",
    "recommend": "recommend suggest suggestion recommendation",
}.items():
    for _w in _words_s.split():
        TASK_CLASSES[_w] = _cls
# Plain questions are explanations: removing this class makes "What is X?" ≡ "Explain X".
DEFAULT_TASK = "explain"

# Groups of interchangeable content words (stems), for paraphrases the embedding alone is unsure about.
SYNONYM_GROUPS = [
    # Curated: interchangeable in any context a prompt is likely to use them in. Co-hyponyms (array/list,
    # function/method, integer/number, merge/join) are deliberately absent: they name different things.
    "car automobile vehicle", "movie film", "kid child children", "buy purchase",
    "begin start commence", "make create build", "stop quit halt cancel abort",
    "big large huge", "small little tiny", "fast quick quickly rapid rapidly speedy speedily", "doctor physician", "job occupation",
    "error bug", "issue problem", "remove delete erase", "cheap inexpensive affordable budget",
    "boss manager supervisor", "slogan tagline motto catchphrase", "recover retrieve get_back", "learn study",
    "find locate search", "choose pick select", "use utilize employ", "need require",
    "cost price", "rich wealthy", "happy glad", "sad unhappy", "smart intelligent clever",
    "house home", "shop store", "phone smartphone cellphone cell mobile", "picture photo image pic", "laptop notebook",
    "folder directory dir", "program application app software", "website site webpage", "internet web online",
    "email mail e-mail", "password passcode", "sick ill", "reason cause why", "purpose goal aim",
    "benefit advantage", "drawback disadvantage downside", "idea suggestion",
    "guide tutorial", "correct right", "beginner novice newbie noob", "talk speak", "say said", "book novel",
    "author writer", "song track", "beautiful pretty", "difficult hard tough", "easy simple",
    "mistake error", "fix repair resolve", "check verify", "copy duplicate", "convert transform",
    "cook prepare", "meal dish", "exercise workout", "ache pain hurt",
    "medicine medication drug", "weight mass", "speed velocity", "assist help",
    "attempt try", "obtain get acquire", "enough sufficient", "often frequently", "maybe perhaps",
    "whole entire", "car auto", "ocean sea", "street road", "couch sofa", "trash garbage rubbish",
    "vacation holiday", "happen occur", "work function operate", "run execute",
    "setup configure configuration config", "install setup", "concatenate concat", "merge combine", "integer int",
    "check see view find_out look_up", "list show display", "read load", "gift present",
    "split divide separate", "sort order", "reverse invert flip", "string text",
    "dictionary dict", "hashmap hash_map", "variable var", "repository repo", "database db",
    "documentation docs", "javascript js", "typescript ts", "python py", "kubernetes k8s", "photograph photo",
    "television tv", "refrigerator fridge", "examples example instance", "fall autumn", "us usa america",
    "mac macos osx", "healthy nutritious wholesome", "environment env", "information info", "message msg",
    "administrator admin", "authentication auth", "temperature temp", "approximately approx", "maximum max",
    "people ppl", "instagram insta", "facebook fb", "youtube yt", "direct_message dm", "wifi wi-fi",
    "grandmother grandma gran granny nan nana", "grandfather grandpa granddad", "mom mum mother mommy mummy",
    "dad father daddy", "tv telly", "math maths", "teenager teen", "apartment flat", "luggage baggage bags",
    "holiday vacation", "sneakers trainers", "because due_to owing_to", "smoke_alarm smoke_detector", "formal professional", "catchy memorable",
    "inspirational motivational inspiring", "cookie biscuit", "fries chips", "elevator lift",
    # British / American / casual names of one thing, and one drug's two names.
    "colleague coworker co-worker", "vaccine vaccination jab", "paracetamol acetaminophen", "bicycle bike",
    "cafe café coffeehouse coffee_shop", "bookshop bookstore", "pharmacy chemist drugstore", "diaper nappy",
    "stroller pram pushchair", "resume cv", "eggplant aubergine", "zucchini courgette", "cilantro coriander",
    "postcode zipcode zip_code postal_code", "highway motorway freeway", "gasoline petrol", "trousers pants",
    "schedule timetable", "refund reimbursement money_back", "pep_talk motivational_speech", "unclog unblock",
    "reduce decrease", "improve enhance boost", "ask inquire enquire", "timezone time_zone",
    "virtualenv virtual_environment venv",
]
# Spelling and abbreviation variants read as their canonical word before anything else (British ↔ American
# spellings the stemmer does not fold, casual abbreviations). Multi-word ones are expanded in ``analysis``.
VARIANTS_WORD = {
    "grey": "gray", "centre": "center", "centres": "centers", "theatre": "theater", "programme": "program",
    "programmes": "programs", "catalogue": "catalog", "dialogue": "dialog", "licence": "license", "defence": "defense",
    "offence": "offense", "travelling": "traveling", "travelled": "traveled", "traveller": "traveler",
    "cancelled": "canceled", "cancelling": "canceling", "modelling": "modeling", "labelled": "labeled",
    "labelling": "labeling", "aluminium": "aluminum", "tyre": "tire", "tyres": "tires", "jewellery": "jewelry",
    "pyjamas": "pajamas", "sceptical": "skeptical", "mould": "mold", "moustache": "mustache", "cosy": "cozy",
    "ageing": "aging", "judgement": "judgment", "manoeuvre": "maneuver", "paediatric": "pediatric",
    "paediatrician": "pediatrician", "anaemia": "anemia", "diarrhoea": "diarrhea", "oesophagus": "esophagus",
    "oestrogen": "estrogen", "haemorrhage": "hemorrhage", "storey": "story", "plough": "plow", "fulfil": "fulfill",
    "enrol": "enroll", "skilful": "skillful", "cheque": "check", "kerb": "curb", "artefact": "artifact",
    "draught": "draft", "sulphur": "sulfur", "yoghurt": "yogurt", "practise": "practice", "practising": "practicing",
    "favourite": "favorite", "colour": "color", "behaviour": "behavior", "neighbour": "neighbor",
    "neighbours": "neighbors", "flavour": "flavor", "humour": "humor", "labour": "labor", "honour": "honor",
    "im": "i", "ive": "i", "youre": "you", "theyre": "they", "shes": "she",
    "u": "you", "ur": "your", "r": "are", "ya": "you", "pls": "please", "plz": "please", "thx": "thanks",
    "wat": "what", "wats": "whats", "wut": "what", "shud": "should", "cud": "could", "wud": "would",
    "tho": "though", "thru": "through", "nite": "night", "tmrw": "tomorrow", "coz": "because", "cuz": "because",
    "bc": "because", "y": "why", "abt": "about", "w": "with", "diff": "difference", "recs": "recommendations",
    "rec": "recommendation", "gonna": "going", "wanna": "want", "gotta": "have", "dont": "do not",
    "doesnt": "does not", "isnt": "is not", "cant": "can not", "wont": "will not", "didnt": "did not",
    "howto": "how", "k8s": "kubernetes", "vs": "versus",
    "shouldnt": "should not", "wouldnt": "would not", "couldnt": "could not", "wasnt": "was not",
    "werent": "were not", "arent": "are not", "havent": "have not", "hasnt": "has not", "hadnt": "had not",
    "mustnt": "must not", "neednt": "need not", "aint": "is not", "bday": "birthday", "gf": "girlfriend",
    "bf": "boyfriend", "convo": "conversation", "b4": "before", "ppl": "people", "msg": "message",
    "pic": "picture", "pics": "pictures", "mongo": "mongodb",
    "teh": "the", "avg": "average", "u'd": "you would", "ud": "you would", "nothin": "nothing", "somethin": "something",
    "wen": "when", "til": "until", "till": "until", "em": "them", "nodejs": "node", "postgresql": "postgres",
}
# Contractions written without an apostrophe: two words, expanded in the text before it is read.
CONTRACTIONS_BARE = {k: v for k, v in VARIANTS_WORD.items() if " " in v}
for _k in CONTRACTIONS_BARE:
    del VARIANTS_WORD[_k]
# Tools that name their platform: one side's "kubectl" is restated by the other side's "Kubernetes".
IMPLIES = {"kubectl": "kubernetes", "helm": "kubernetes", "minikube": "kubernetes", "pip": "python",
           "venv": "python", "pytest": "python",
           "dataframe": "pandas", "npm": "node", "npx": "node", "yarn": "node", "cargo": "rust",
           "rustc": "rust", "gcc": "c", "javac": "java", "maven": "java", "gradle": "java", "psql": "postgres",
           "dockerfile": "docker", "brew": "macos", "homebrew": "macos", "apt": "linux", "systemctl": "linux",
           "bash": "linux", "powershell": "windows", "git": "github", "gh": "github"}
# Words that frame a request without adding content ("any tips for…", "what's the process for…", "the right
# way to…"): on one side only they change nothing the answer has to say.
FRAMING = frozenset("""
way ways method methods approach procedure process steps step technique techniques strategy strategies tip tips
trick tricks hack hacks advice recommendation recommendations suggestion suggestions idea ideas option options
guidance pointers help helpful recommended proper proper properly right correct correctly best good ideal
syntax command commands instructions instruction guide explanation overview rundown summary
someone anyone somebody anybody folks guys question questions wondering curious
term terms phrase expression idiom keyword word concept lol haha lmao ty tia pls plz thx please thanks versus
people person become credited easiest simplest bit
actually really exactly specifically basically simply just also still ever
though tho kinda sorta honestly tbh btw idk wtf even appreciate
""".split())
# Words that add nothing to what is asked, on one side only: intensifiers and hedges ("super laggy", "a complete
# beginner"), evaluative words a request adds ("a meaningful present"), verbs of seeming ("why does the sky
# appear blue"). Scope words (whole, entire, only, just, all) are not among them: they change the set asked about.
LIGHT = frozenset("""
super very really so pretty quite extremely totally completely absolutely fully truly seriously literally
complete total absolute utter real actual genuine overall general specific particular certain
appear appears appeared seem seems seemed look looks
currently presently nowadays these days anymore nice lovely piece pieces experience experiencing experiences
provide share considered existing standard typical normal equal equals nah em called named
""".split())
# Verbs of becoming: before an adjective they only link it ("leaves going yellow" = "turning yellow").
BECOME_VERBS = frozenset(["go", "turn", "become", "get", "grow"])
# Polar words that are particles of the verb before them ("log in"/"log out", "went up"/"went down").
PARTICLE_POLAR = frozenset(["in", "out", "on", "off", "up", "down"])
# Particles a phrasal verb may put after its object ("get the wax off", "throw the box away").
PARTICLES = frozenset(["out", "off", "up", "down", "back", "away", "over", "into", "together", "rid"])
# Phrasal verbs around an object whose meaning WordNet files under another sense: "get X off/out" removes X,
# "turn X into Y" converts it.
PHRASAL = {"get_back": "syn:recov",
           "get_off": "syn:remov", "get_out": "syn:remov", "take_off": "syn:remov", "take_out": "syn:remov",
           "turn_into": "syn:convert", "make_into": "syn:convert", "put_together": "syn:make", "set_up": "syn:setup"}
# Structural framings of a question, explained by the other side's question form: "What causes X?" /
# "What makes X…?" / "What is the reason…?" = "Why…?"; "Why does X happen?" = "What causes X?";
# "How do you say X in French?" = "Translate X into French"; "the number of X" = "how many X".
WHY_FRAME = frozenset(["cause", "causes", "caused", "causing", "reason", "reasons", "makes", "make"])
HAPPEN_FRAME = frozenset(["happen", "happens", "happened", "occur", "occurs", "occurred"])
# Very common English function words (the language check counts them).
EN_FUNCTION = frozenset("""
the a an to of in on for with is are was were be been do does did how what why when where who which i you my
your it this that these those can could should would will and or not no be have has had if from by at as me we
our they their there about into than then so but just any some all its he she his her him them us am
""".split())
# Frequent function words of other Latin-script languages that are not English words (French, German, Spanish,
# Italian, Portuguese, Dutch); English homographs (die, was, also, den, van, per, come) are left out.
FOREIGN_FUNCTION = frozenset("""
le la les des du une est et pour avec dans que qui pas sur ce cette mon ma mes je tu il elle nous vous ils sont
au aux peut comment quel quelle quels quelles pourquoi où quand peux puis faire
der das und ist nicht ich du wir ihr sie mit ein eine einen einem einer zu dem des wie warum wo wann welche
welcher kann können auf für sind im vom zum zur bei nach oder mein meine wird werden auch noch
el los las es un una por para como con del lo qué cómo cuál cuándo dónde mi su sus hay está son puedo
tengo hago cuánto cuántos
il di che è sono non della delle dello una perché quale quanto questo questa posso fare si
um uma não em na nas nos os da das dos com para qual são quanto quantos posso fazer meu minha
het een en op voor met niet ik wat hoe waarom mijn zijn wordt kan moet ook naar bij
""".split()) - EN_FUNCTION

SYNONYM: dict[str, str] = {}

GAZETTEER = frozenset(["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december", "spring", "summer", "autumn", "fall", "winter", "red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown", "black", "white", "gray", "grey", "mercury", "venus", "earth", "mars", "jupiter", "saturn", "uranus", "neptune", "pluto", "python", "java", "javascript", "typescript", "rust", "go", "golang", "ruby", "php", "perl", "swift", "kotlin", "scala", "haskell", "c", "c++", "cpp", "csharp", "sql", "bash", "powershell", "html", "css", "react", "vue", "angular", "svelte", "django", "flask", "rails", "spring", "node", "nodejs", "linux", "windows", "macos", "mac", "ios", "android", "ubuntu", "debian", "fedora", "chrome", "firefox", "safari", "edge", "excel", "word", "powerpoint", "aws", "azure", "gcp", "docker", "kubernetes", "postgres", "postgresql", "mysql", "sqlite", "mongodb", "redis", "kafka", "england", "france", "germany", "spain", "italy", "china", "japan", "india", "russia", "brazil", "canada", "mexico", "usa", "america", "australia", "paris", "london", "berlin", "madrid", "rome", "tokyo", "beijing", "moscow", "english", "french", "german", "spanish", "italian", "chinese", "japanese", "russian", "portuguese", "arabic", "hindi", "korean", "dutch", "today", "tomorrow", "yesterday", "tonight", "morning", "afternoon", "evening", "night", "weekend", "weekday"])

# Yes/no questions open with a modal; its force matters ("Can I…?" ≠ "Should I…?"), in how-questions it does not.
MODAL_CLASS = {"can": "can", "could": "can", "should": "should", "ought": "should", "must": "must",
                "will": "will", "would": "will", "may": "may", "might": "may", "shall": "should"}


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light, consistent suffix stripper (both texts pass through the same one)."""
    w = word
    if w.endswith("'s"):
        w = w[:-2]
    for british, american in (("isation", "ization"), ("ising", "izing"), ("ised", "ized"), ("ise", "ize"),
                              ("yse", "yze"), ("ysing", "yzing"), ("ysed", "yzed"), ("our", "or")):
        if w.endswith(british) and len(w) > len(british) + 2:
            w = w[: -len(british)] + american
            break
    if len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "xes", "ches", "shes", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]
            elif w.endswith(("at", "iz", "yz", "bl", "ag", "uc", "os", "lv", "rv", "rg", "ak", "tiv", "ur", "it", "ot", "id", "ov", "pl")) and suffix:
                w = w + "e"
            break
    if w.endswith("e") and len(w) > 4 and not w.endswith(("ee", "ie")):
        w = w[:-1]
    return w


# Question frames: words that ask for the same attribute or relation of a thing are one key ("Who wrote X?" =
# "Who is the author of X?"). Attribute frames are exclusive: "How tall is X?" ≠ "How old is X?".
FRAMES: dict[str, str] = {
    "author": "write wrote written writes writer writers author authors authored penned",
    "illustrator": "illustrated illustrator illustrators", "translator": "translated translator",
    "inventor": "invent invented inventor inventors", "discoverer": "discovered discoverer",
    "founder": "founded founder founders", "director": "directed director", "painter": "painted painter artist",
    "composer": "composed composer", "architect": "designed architect", "birth": "born birth birthday birthdate",
    "death": "die died death dead", "population": "population populous inhabitants inhabitant residents resident",
    "height": "tall height high elevation", "width": "wide width broad", "length": "length", "depth": "deep depth",
    "weight": "heavy weight weigh weighs", "age": "old age", "distance": "far distance",
    "temperature": "temperature temp hot", "price": "cost costs price prices priced expensive pay afford fee fees",
    "capital": "capital", "currency": "currency currencies", "language": "speak spoken official",
    "area": "area", "symptom": "symptom symptoms sign signs", "treatment": "treat treated treatment cure remedy",
    "prevention": "prevent prevention", "similarity": "common similar similarity similarities alike",
    "difference": "difference differences differ different distinguish distinguishes distinction",
    "history": "history origin originate originated", "pronunciation": "pronounce pronunciation",
    "timezone": "zone", "acronym": "stand abbreviation abbreviate abbreviated acronym expand expansion",
    "make": "make makes made create build built cook prepare recipe recipes",
    "exit": "exit quit leave", "work": "work works worked working function functions operate operates", "opposite": "opposite opposites antonym antonyms", "synonym": "synonym synonyms",
    "spouse": "married marry spouse wife husband", "rhyme": "rhyme rhymes",
}
EXCLUSIVE_FRAMES = frozenset(FRAMES) - {"make", "exit", "acronym", "work"}
for _frame, _ws in FRAMES.items():
    for _w in _ws.split():
        SYNONYM.setdefault(stem(_w), "frame:" + _frame)
        SYNONYM.setdefault(_w, "frame:" + _frame)
for _group in SYNONYM_GROUPS:
    _members = _group.split()
    for _m in _members:
        SYNONYM.setdefault(stem(_m), "syn:" + stem(_members[0]))
        SYNONYM.setdefault(_m, "syn:" + stem(_members[0]))

STOP_STEMS = frozenset(stem(w) for w in STOPWORDS)
LIGHT_STEMS = frozenset(stem(w) for w in LIGHT)
FRAMING_STEMS = frozenset(stem(w) for w in FRAMING)
TASK_STEMS = {stem(w): c for w, c in TASK_CLASSES.items()}
ANTONYM_STEMS: dict[str, set[str]] = {}
for _w, _opposites in ANTONYMS.items():
    ANTONYM_STEMS.setdefault(stem(_w), set()).update(stem(o) for o in _opposites)
NEG_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "anti")

# Numbers written as words.
NUM_WORDS = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"])}
NUM_WORDS.update({w: 10 * (i + 2) for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"])})
NUM_WORDS.update({"dozen": 12, "half": 0.5, "quarter": 0.25, "twice": 2, "double": 2, "triple": 3, "hundred": 100,
                   "thousand": 1000, "million": 1e6, "billion": 1e9, "trillion": 1e12, "k": 1000})
MULTIPLIERS = {"hundred": 100, "thousand": 1000, "million": 1e6, "billion": 1e9, "trillion": 1e12, "k": 1000,
                "m": 1e6, "bn": 1e9}
ORDINALS = {w: i + 1 for i, w in enumerate(
    ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
     "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth"])}
ORDINALS.update({w: 10 * (i + 2) for i, w in enumerate(
    ["twentieth", "thirtieth", "fortieth", "fiftieth", "sixtieth", "seventieth", "eightieth", "ninetieth"])})
ORDINALS.update({"hundredth": 100, "thousandth": 1000})
# Words that select the most recent N ("the last 3 commits" = "the previous three" = "the past 3 months").
RECENT_N = frozenset(["last", "previous", "past", "latest", "recent", "final"])

# Units and currencies → canonical unit; order of appearance matters for direction ("USD to EUR").
UNITS: dict[str, str] = {}
for _canon, _names in {
    "km": "km kilometer kilometers kilometre kilometres", "mile": "mi mile miles", "m": "meter meters metre metres",
    "cm": "cm centimeter centimeters centimetre centimetres", "mm": "mm millimeter millimeters",
    "ft": "ft foot feet", "inch": "inch inches", "yard": "yd yard yards", "kg": "kg kilogram kilograms kilo kilos",
    "g": "gram grams", "lb": "lb lbs pound pounds", "oz": "oz ounce ounces", "ton": "ton tons tonne tonnes",
    "l": "liter liters litre litres", "ml": "ml milliliter milliliters millilitre", "gallon": "gallon gallons gal",
    "cup": "cup cups", "tbsp": "tbsp tablespoon tablespoons", "tsp": "tsp teaspoon teaspoons",
    "celsius": "celsius °c centigrade", "fahrenheit": "fahrenheit °f", "kelvin": "kelvin",
    "percent": "% percent percentage pct", "usd": "$ usd dollar dollars", "eur": "€ eur euro euros",
    "gbp": "£ gbp sterling", "jpy": "¥ jpy yen", "cny": "cny yuan rmb", "inr": "inr rupee rupees",
    "chf": "chf franc francs", "cad": "cad", "aud": "aud", "btc": "btc bitcoin", "eth": "eth ether ethereum",
    "hour": "h hr hrs hour hours", "minute": "min mins minute minutes", "sec": "sec secs seconds",
    "ms": "ms millisecond milliseconds", "day": "day days", "week": "week weeks", "month": "month months",
    "year": "yr yrs year years", "decade": "decade decades", "century": "century centuries",
    "mph": "mph", "kph": "kph kmh km/h", "gb": "gb gigabyte gigabytes", "mb": "mb megabyte megabytes",
    "kb": "kb kilobyte kilobytes", "tb": "tb terabyte terabytes", "byte": "byte bytes", "bit": "bit bits",
    "hz": "hz hertz", "ghz": "ghz", "mhz": "mhz", "watt": "w watt watts", "kw": "kw kilowatt kilowatts",
    "kwh": "kwh", "volt": "v volt volts", "amp": "amp amps ampere amperes", "calorie": "calorie calories kcal cal",
    "degree": "degree degrees °", "radian": "radian radians", "acre": "acre acres", "hectare": "hectare hectares",
    "psi": "psi", "bar": "bar", "pixel": "px pixel pixels", "dpi": "dpi",
}.items():
    for _n in _names.split():
        UNITS[_n] = _canon
# Short unit spellings that are ordinary words elsewhere count only right after a number.
UNIT_NEEDS_NUMBER = frozenset({"m", "g", "h", "w", "v", "l", "s", "in", "min", "sec", "cal", "bar", "gal", "k", "ms",
                               "mi",
                               "eth", "bit", "bits",
                               # Time words are units only with a number ("3 years"); "what year" asks a date.
                               "year", "years", "yr", "yrs", "month", "months", "week", "weeks", "day", "days", "hour",
                               "hours", "hr", "hrs", "minute", "minutes", "mins", "seconds", "secs", "decade", "decades",
                               "century", "centuries"})

CONTRACTIONS = {
    "can't": "can not", "cannot": "can not", "won't": "will not", "shan't": "shall not", "ain't": "is not",
    "what's": "what is", "it's": "it is", "that's": "that is", "there's": "there is", "how's": "how is",
    "where's": "where is", "who's": "who is", "let's": "let us", "i'm": "i am", "you're": "you are",
    "we're": "we are", "they're": "they are", "i've": "i have", "you've": "you have", "i'd": "i would",
    "i'll": "i will", "you'll": "you will", "you'd": "you would", "we'd": "we would", "they'd": "they would",
    "he'd": "he would", "she'd": "she would", "we'll": "we will", "they'll": "they will",
    "we've": "we have", "they've": "they have", "he's": "he is", "she's": "she is",
}


# Quantifiers by class; "any" reads as existential ("Do any birds fly?" = "Do some birds fly?").
QUANTIFIERS: dict[str, str] = {}
for _cls, _qs in {"all": "all every each always everyone everybody everything everywhere both",
                  "some": "some several sometimes someone somebody something any anyone anybody anything either",
                  "many": "many numerous lots plenty",
                  "most": "most majority mostly usually generally typically normally commonly",
                  "few": "few rarely seldom hardly"}.items():
    for _q in _qs.split():
        QUANTIFIERS[_q] = _cls
#: Quantifiers that pick part of a set named next ("most of them", "a few students"): compared in context sentences.
QUANTIFIER_DETERMINERS = frozenset(["all", "every", "each", "most", "some", "few", "several", "any", "none", "both",
                                    "either", "many"])
#: Nouns after which "next"/"coming" name a time ("next week", "the coming months"), not an order ("next step").
TIME_NOUNS = frozenset(["day", "days", "week", "weeks", "weekend", "month", "months", "year", "years", "decade",
                        "century", "time", "season", "summer", "winter", "spring", "fall", "autumn", "semester",
                        "quarter", "morning", "evening", "night", "monday", "tuesday", "wednesday", "thursday",
                        "friday", "saturday", "sunday", "hour", "hours", "minute", "minutes", "generation"])
#: Seconds per unit of time: a number with one of these is a duration ("14 days" = "2 weeks").
DURATION_S = {"sec": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "week": 604800.0, "month": 2629800.0,
              "year": 31557600.0, "decade": 315576000.0, "century": 3155760000.0}
#: Data formats that name a file as often as the shape of an answer ("a JSON file" / "answer in JSON").
FILE_FORMATS = frozenset(["json", "yaml", "xml", "csv", "markdown"])
#: File types whose name says "file" already: "a CSV file" = "a CSV", "a .pdf" (the word "file" adds nothing).
FILE_TYPES = FILE_FORMATS | frozenset(["pdf", "txt", "excel", "xlsx", "xls", "docx", "zip", "tar", "png", "jpg",
                                       "jpeg", "gif", "svg", "mp3", "mp4", "html", "parquet", "sqlite", "log", "text",
                                       "config", "env", "dockerfile", "yml", "tsv", "ini", "toml"])
#: Nouns that only name a quoted text the request is about ("Paraphrase the sentence 'X'" = "Reword 'X'").
GIVEN_TEXT_NOUNS = frozenset(["sentence", "text", "paragraph", "passage", "phrase", "statement", "line", "quote",
                              "message", "snippet", "sentences"])
#: Kinds of work or thing named before their title ("the book Atomic Habits", "the film Alien"): the title names it.
TYPE_NOUNS = frozenset(["book", "novel", "film", "movie", "song", "album", "show", "series", "play", "poem", "game",
                        "app", "podcast", "painting", "opera", "musical", "documentary", "band"])
#: Nouns for a person that a "which X" question asks for as "who" does ("Which author wrote X?" = "Who wrote X?").
PERSON_NOUNS = frozenset(["person", "people", "scientist", "inventor", "author", "writer", "artist", "painter",
                          "composer", "president", "king", "queen", "leader", "player", "actor", "actress", "singer",
                          "musician", "explorer", "philosopher", "mathematician", "physicist", "chemist", "poet",
                          "novelist", "director", "founder", "emperor", "ruler", "pharaoh", "general", "athlete"])
#: Nouns for what tells a state apart ("the signs that milk has spoiled" = "how can I tell if milk has gone bad").
SIGN_NOUNS = frozenset(["sign", "signs", "symptom", "symptoms", "indication", "indications", "indicator",
                        "indicators", "warning"])
#: Participles that only attach a thing to its owner ("the address linked to my account" = "on my account").
ATTACHING = frozenset(["linked", "associated", "attached", "tied", "connected"])
#: Verbs of beginning: before a gerund or "to" they add nothing asked ("start learning X" = "learn X").
BEGIN_VERBS = frozenset(["start", "begin", "starting", "beginning", "started", "began", "begun", "starts", "begins"])
#: Quantifier classes that constrain the answer even when the other side has none ("Do all birds fly?" ≠ "Do birds fly?").
STRONG_QUANTIFIERS = frozenset({"all", "most", "few", "one"})
#: Fixed phrases where a quantifier word is not one: (word, next word) or (previous word, word).
QUANTIFIER_IDIOMS = frozenset({("at", "all"), ("all", "over"), ("all", "right"), ("after", "all"), ("all", "in"),
                               ("the", "most"), ("at", "most"), ("most", "likely"), ("any", "more"),
                               ("any", "way"), ("anyway", ""), ("any", "tips"), ("any", "suggestions"),
                               ("any", "ideas"), ("any", "advice"), ("any", "recommendations")}
                              # "most" before an adjective is a superlative ("most recent commit"), not "most of".
                              | {("most", w) for w in ["recent", "recently", "common", "popular", "important", "famous", "effective", "efficient", "expensive", "beautiful", "powerful", "used", "visited", "dangerous", "successful", "valuable", "likely"]})

# Modal force by class (yes/no and declarative use; "how can I" / "can you" are ignored by the checker).
MODALS: dict[str, str] = {
    "can": "can", "could": "can", "able": "can", "possible": "can", "allowed": "can", "permitted": "can",
    "may": "can", "might": "can", "ok": "can", "okay": "can", "fine": "can",
    "should": "should", "ought": "should", "advisable": "should", "recommended": "should", "wise": "should",
    "must": "must", "need": "must", "needs": "must", "required": "must", "necessary": "must", "mandatory": "must",
    "obligatory": "must", "have_to": "must", "has_to": "must", "got_to": "must", "supposed": "should",
    "legal": "can", "obligated": "must", "obliged": "must", "expected": "should", "illegal": "must_not",
    "forbidden": "must_not", "prohibited": "must_not", "banned": "must_not",
}

#: Prefixes of hyphenated ordinary words ("re-read", "e-mail", "well-known"); other hyphenated tokens are names/ids.
COMPOUND_PREFIXES = frozenset(["re", "pre", "co", "non", "un", "e", "self", "well", "anti", "multi", "sub", "over", "under", "post", "semi", "mid", "ex", "half"])
# "What year…" asks when, "Which person…" who. ("Which country won…?" asks who, so places are not mapped.)
WH_NOUNS = {**dict.fromkeys(["year", "years", "time", "date", "day", "month", "century", "decade", "era"], "when"),
            **dict.fromkeys(["person", "people", "man", "woman", "author", "writer", "scientist", "player"], "who")}
# Time references that change the answer ("last year", "next week", "in the past"); "now"/"currently" are the
# default and carry nothing. Synonyms share a class ("last"/"latest"/"most recent").
TIME_WORDS: dict[str, str] = {}
for _cls, _ws in {"latest": "last latest recent recently newest", "next": "next upcoming coming",
                  "past": "past ago former formerly previously ancient", "future": "future soon later eventually",
                  "earlier": "earlier", "yesterday": "yesterday", "today": "today", "tonight": "tonight",
                  "tomorrow": "tomorrow", "weekend": "weekend weekends", "morning": "morning mornings",
                  "afternoon": "afternoon", "evening": "evening evenings", "night": "night nights overnight"}.items():
    for _w in _ws.split():
        TIME_WORDS[_w] = _cls
PRONOUNS_I = frozenset({"i", "we", "you", "one"})

# Question words; the ones whose answers are of different kinds never paraphrase each other.
WH_WORDS = frozenset(["what", "which", "who", "whom", "whose", "where", "when", "why", "how"])
WH_EXCLUSIVE = {"who": "who", "whom": "who", "whose": "who", "where": "where", "when": "when", "why": "why"}
AUXILIARIES = frozenset(["is", "are", "am", "was", "were", "do", "does", "did", "can", "could", "should", "would", "will", "shall", "may", "might", "must", "has", "have", "had", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't"])
# Perfect forms ("has sent") are left out: "Has X sent…?" and "Did X send…?" ask the same.
TENSE = {"is": "present", "are": "present", "am": "present", "do": "present", "does": "present",
         "was": "past", "were": "past", "did": "past", "will": "future", "shall": "future"}
# Lead-ins that make the rest the real question ("Can you tell me who…", "Do you know when…").
REQUEST_LEADS = frozenset(["you", "tell", "me", "explain", "know", "wondering", "wonder", "please", "kindly", "let", "us", "i", "was", "want", "to", "like", "would", "curious", "quick", "question", "hey", "hi", "hello", "sorry", "bother", "but"])

# Answer-shape constraints: length, format, audience. Language targets are read from "in/into <language>".
SHAPE_WORDS: dict[str, str] = {}
for _tag, _ws in {"len:short": "short brief briefly concise concisely succinct succinctly nutshell tldr oneliner",
                  "len:long": "detailed detail details thorough thoroughly comprehensive comprehensively elaborate "
                              "extensive extensively depth lengthy long",
                  "fmt:json": "json", "fmt:yaml": "yaml", "fmt:xml": "xml", "fmt:csv": "csv", "fmt:markdown": "markdown",
                  "fmt:table": "table tabular", "fmt:bullets": "bullet bullets bulleted bullet-point bullet-points",
                  "fmt:numbered": "numbered", "fmt:steps": "step-by-step", "fmt:code": "code snippet snippets",
                  "fmt:example": "example examples", "fmt:alpha": "alphabetical alphabetically",
                  "aud:child": "eli5 child children kid kids five-year-old toddler", "aud:expert": "expert experts technical",
                  "aud:beginner": "beginner beginners layman laymen dummies novice"}.items():
    for _w in _ws.split():
        SHAPE_WORDS[_w] = _tag
LANGUAGES = frozenset(["english", "french", "german", "spanish", "italian", "chinese", "mandarin", "cantonese", "japanese", "russian", "portuguese", "arabic", "hindi", "korean", "dutch", "swedish", "norwegian", "danish", "finnish", "polish", "turkish", "greek", "hebrew", "latin", "vietnamese", "thai", "indonesian", "swahili", "ukrainian", "czech", "hungarian", "romanian", "persian", "farsi", "bengali", "urdu", "tagalog", "malay"])

# Task classes whose words name one operation ("write"/"draft"/"compose"): as content words they are synonyms.
SYNONYM_TASKS = frozenset({"write", "summarize", "translate"})
# Tasks that produce a different kind of output; a mismatch in these is a different request. Other task classes
# (explain, calculate, recommend, list, compare…) are ways of asking the same question.
GENERATIVE_TASKS = frozenset({"pronounce", "summarize", "translate", "write", "rewrite", "classify", "extract", "fix",
                              "test", "outline", "review", "analyze", "predict", "optimize"})
# Arithmetic operations: "12 times 7" ≠ "12 plus 7".
ARITHMETIC: dict[str, str] = {}
for _op, _ws in {"mul": "times multiply multiplied product", "div": "divide divided quotient",
                 "add": "plus sum added", "sub": "minus subtract subtracted"}.items():
    for _w in _ws.split():
        ARITHMETIC[_w] = _op

# Proper names written in lower case often enough ("weather in tokyo"): places and languages.
GAZETTEER = GAZETTEER | LANGUAGES | frozenset(["afghanistan", "albania", "algeria", "angola", "argentina", "armenia", "austria", "azerbaijan", "bangladesh", "belarus", "belgium", "bolivia", "bosnia", "botswana", "bulgaria", "cambodia", "cameroon", "chad", "colombia", "congo", "croatia", "cuba", "cyprus", "czechia", "denmark", "ecuador", "egypt", "estonia", "ethiopia", "fiji", "finland", "georgia", "ghana", "greece", "guatemala", "haiti", "honduras", "hungary", "iceland", "indonesia", "iran", "iraq", "ireland", "israel", "jamaica", "jordan", "kazakhstan", "kenya", "kuwait", "laos", "latvia", "lebanon", "libya", "lithuania", "luxembourg", "madagascar", "malaysia", "mali", "malta", "mongolia", "morocco", "mozambique", "myanmar", "namibia", "nepal", "netherlands", "holland", "nicaragua", "niger", "nigeria", "norway", "oman", "pakistan", "panama", "paraguay", "peru", "philippines", "poland", "portugal", "qatar", "romania", "rwanda", "senegal", "serbia", "singapore", "slovakia", "slovenia", "somalia", "sudan", "sweden", "switzerland", "syria", "taiwan", "tanzania", "thailand", "tunisia", "turkey", "uganda", "ukraine", "uruguay", "uzbekistan", "venezuela", "vietnam", "yemen", "zambia", "zimbabwe", "scotland", "wales", "korea", "chile", "cuba", "uk", "tokyo", "osaka", "kyoto", "seoul", "shanghai", "hong", "kong", "delhi", "mumbai", "bangalore", "karachi", "lahore", "dhaka", "jakarta", "manila", "bangkok", "hanoi", "singapore", "sydney", "melbourne", "auckland", "toronto", "vancouver", "montreal", "chicago", "boston", "seattle", "miami", "dallas", "houston", "denver", "atlanta", "phoenix", "philadelphia", "detroit", "nairobi", "lagos", "cairo", "johannesburg", "lima", "bogota", "santiago", "caracas", "havana", "dublin", "lisbon", "barcelona", "vienna", "prague", "budapest", "warsaw", "amsterdam", "brussels", "copenhagen", "stockholm", "oslo", "helsinki", "athens", "istanbul", "dubai", "riyadh", "tehran", "baghdad", "jerusalem", "munich", "hamburg", "milan", "naples", "venice", "florence", "geneva", "zurich", "edinburgh", "manchester", "liverpool", "glasgow", "quebec"])
