"""KetamaRing and the key hashes: known vectors, the float32 point count, ties, wrap-around.

The vectors come from libmemcached's test suite (test/fixtures/ketama.hpp and hashes.hpp,
also quoted by twemproxy's src/test_all.c) and from keys whose placement
tests/compat/test_ketama_nutcracker.py checks against a real nutcracker.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring.proxy.ketama import (
    HASH_NAMES,
    KetamaRing,
    key_hash,
    point_name,
    points_per_server,
)

pytestmark = pytest.mark.unit

LIBMEMCACHED_KETAMA_CASES: list[tuple[bytes, int, int, str]] = [
    (b'SVa_]_V41)', 443691461, 445379617, '10.0.1.7'),
    (b'*/Z;?V(.\\8', 1422915503, 1428303028, '10.0.1.1'),
    (b'30C1*Z*S/_', 1473165754, 1480075959, '10.0.1.2'),
    (b'ERR:EC58G>', 2148406511, 2168579133, '10.0.1.7'),
    (b'1I=cTMNTKF', 2882686667, 2885206587, '10.0.1.5'),
    (b']VG<`I*Z8)', 1103544263, 1104827657, '10.0.1.5'),
    (b'UUTC`-V159', 3716288206, 3727224240, '10.0.1.5'),
    (b'@7RU6C6T+Z', 3862737685, 3871917949, '10.0.1.5'),
    (b'/XLN0@+36;', 1623269830, 1627683651, '10.0.1.1'),
    (b'4(`X;\\V.^c', 373546328, 383925769, '10.0.1.1'),
    (b'726bW=9*a4', 4213440020, 4213950705, '10.0.1.7'),
    (b'\\`)<B)UE,c', 951096736, 955226069, '10.0.1.1'),
    (b'P1[Ma3=K1/', 1989324036, 1994028240, '10.0.1.8'),
    (b'C89I.-V?cT', 1604239957, 1606398093, '10.0.1.8'),
    (b'D[HE+cFXDK', 2117036136, 2117124014, '10.0.1.3'),
    (b'P1L?NAB[)K', 2129972569, 2132542634, '10.0.1.1'),
    (b'cDT0)Z5P6,', 176485284, 178675413, '10.0.1.5'),
    (b'@JW`+[WAO8', 2720940826, 2743975456, '10.0.1.5'),
    (b'\\39DKW^)N_', 3548879868, 3550704865, '10.0.1.3'),
    (b'EM75N0+[X1', 1558531507, 1559308507, '10.0.1.4'),
    (b'`,SS]NBP,b', 1883545960, 1884847278, '10.0.1.1'),
    (b'XX1a9LT+F?', 653487707, 656410408, '10.0.1.5'),
    (b'Zc\\-,F-c6V', 1160802451, 1171575728, '10.0.1.5'),
    (b'1*RTMC7,03', 1602398012, 1606398093, '10.0.1.8'),
    (b'*Xc+V0P>32', 536016577, 539988520, '10.0.1.7'),
    (b'U))Fb-(`,.', 4128682289, 4136854163, '10.0.1.7'),
    (b'R-08RNTaRT', 3718170086, 3727224240, '10.0.1.5'),
    (b'(LHcO203I3', 1007779411, 1014643570, '10.0.1.5'),
    (b'=256P+;Qc8', 3976201210, 3976304873, '10.0.1.5'),
    (b'OI5XZ_BBT(', 2155922164, 2168579133, '10.0.1.7'),
    (b'2TLRL/UL;:', 1086800909, 1095659802, '10.0.1.7'),
    (b'WHD\\O1`ZRW', 3087923411, 3095471560, '10.0.1.5'),
    (b'.=54)_c;=T', 2497691631, 2502731301, '10.0.1.1'),
    (b';G<W-XWZ@b', 2888169733, 2888728739, '10.0.1.5'),
    (b'(,>E`)FT\\4', 580747448, 581063326, '10.0.1.2'),
    (b'HZAU*;P*N]', 2564670474, 2565697267, '10.0.1.7'),
    (b'NZ@ZE=O84_', 533335275, 539988520, '10.0.1.7'),
    (b'6,cEI`F_P>', 3972869246, 3974773167, '10.0.1.6'),
    (b'c,5AQ/T5)6', 2835605783, 2847870057, '10.0.1.8'),
    (b'.O,>>BT)RX', 3857978174, 3871917949, '10.0.1.5'),
    (b'XY\\X::LX50', 1749241099, 1752196488, '10.0.1.6'),
    (b'+550F^/.01', 3781824099, 3783248219, '10.0.1.6'),
    (b'<.X9E2S5+9', 3232479481, 3234387706, '10.0.1.7'),
    (b']\\.UH8_0a1', 2419699252, 2423002920, '10.0.1.4'),
    (b'8(6=(T0/Z0', 728266737, 729026070, '10.0.1.7'),
    (b'8*6a;Sc*X+', 4223431086, 4230156966, '10.0.1.2'),
    (b'<QW:;3K6;H', 2731158143, 2743975456, '10.0.1.5'),
    (b'7C@EY@-Y?_', 760770733, 761576669, '10.0.1.5'),
    (b'aPb3E1WD4K', 2500489218, 2502731301, '10.0.1.1'),
    (b'?@12R<=1BH', 1494795329, 1502505505, '10.0.1.8'),
    (b'QR(a+Q=1FU', 3238535074, 3238996435, '10.0.1.6'),
    (b'`C9^FV,960', 2628553463, 2628733766, '10.0.1.6'),
    (b'UNHVP..^8H', 977096483, 977319837, '10.0.1.4'),
    (b':Y.2W2[(35', 2777083668, 2784182515, '10.0.1.7'),
    (b'M/HV^_HZ4O', 3623390946, 3624445007, '10.0.1.7'),
    (b'ZY16KQ<ICD', 1831153193, 1838563516, '10.0.1.4'),
    (b'bV2,`a.PY9', 1962228869, 1962648654, '10.0.1.1'),
    (b'U;9:-+5N]9', 269504649, 277560877, '10.0.1.1'),
    (b'1S/:aJ[1(;', 578069729, 581063326, '10.0.1.2'),
    (b'Nb-X^]M)I:', 330865696, 331009896, '10.0.1.6'),
    (b'2;M;ES>J5/', 2776949824, 2784182515, '10.0.1.7'),
    (b'[>RZHG97Q9', 71954686, 72034069, '10.0.1.6'),
    (b'J3/G[)9<^Z', 2799896459, 2805183696, '10.0.1.7'),
    (b'N-)88>[O`,', 50404102, 51792557, '10.0.1.5'),
    (b'NP:=FR\\OaA', 3837333776, 3837792034, '10.0.1.7'),
    (b'`@L+W;a,O[', 1512157148, 1522285852, '10.0.1.6'),
    (b'W2`P:-+1T[', 2945171975, 2946196424, '10.0.1.5'),
    (b'-6G7K^YDIN', 3168617340, 3170513015, '10.0.1.7'),
    (b'U>*>9ZI6V5', 668514946, 674097631, '10.0.1.6'),
    (b'.I?^6Ic9RK', 938419020, 942832691, '10.0.1.6'),
    (b'0OZH^9BKM[', 3682518606, 3686781297, '10.0.1.8'),
    (b'5?50UGZ:ML', 868610882, 869425986, '10.0.1.5'),
    (b'?K2NF@3=IU', 381218851, 383925769, '10.0.1.1'),
    (b'YI@G-2X?UB', 3688706179, 3693197681, '10.0.1.5'),
    (b'7cY</BSaL=', 3976870223, 3978903843, '10.0.1.6'),
    (b'A(`KF:[RH8', 3292979676, 3294849139, '10.0.1.6'),
    (b';=ZT\\W^P+H', 1401102653, 1416290674, '10.0.1.4'),
    (b'b2?WFF56;R', 480494704, 486971192, '10.0.1.4'),
    (b'CTR74,J+N.', 137446045, 146633907, '10.0.1.8'),
    (b'<b;*R+QDST', 1304985302, 1308223778, '10.0.1.5'),
    (b'\\R^7=9UCG`', 126218373, 129199837, '10.0.1.5'),
    (b'1bQS5]WOXB', 1853470245, 1855329369, '10.0.1.4'),
    (b'M(@X^b[L:K', 3019630308, 3022260113, '10.0.1.1'),
    (b'431cBF8,YO', 1679726993, 1685224295, '10.0.1.7'),
    (b'(bEIQJ:E./', 2922607787, 2925521819, '10.0.1.6'),
    (b'WS/3H*)7F;', 419488232, 422140585, '10.0.1.5'),
    (b'ZJF[Ia6Q)+', 3960568056, 3962489998, '10.0.1.7'),
    (b'<]*QCK8U,>', 2590140172, 2598117636, '10.0.1.7'),
    (b'\\[a\\^=V_M0', 689410119, 698690782, '10.0.1.6'),
    (b'7;RM+8J9YC', 1530175299, 1531107082, '10.0.1.7'),
    (b'4*=.SPR[AV', 3928582722, 3928853792, '10.0.1.1'),
    (b'-2F+^88P4U', 3023552752, 3025823613, '10.0.1.7'),
    (b'X;-F`(N?9D', 570465234, 572485994, '10.0.1.7'),
    (b'R=F_D-K2a]', 1287750228, 1290935562, '10.0.1.7'),
    (b'X*+2aaC.EG', 3200948713, 3201088518, '10.0.1.5'),
    (b'[1ZXONX2]a', 4108881567, 4109865744, '10.0.1.4'),
    (b'FL;\\GWacaV', 458449508, 467374054, '10.0.1.4'),
    (b'\\MQ_XNT7L-', 1259349383, 1259509450, '10.0.1.7'),
    (b'VD6D0]ba_\\', 3842502950, 3842588691, '10.0.1.1'),
]
HASH_INPUTS: list[bytes] = [
    b'apple', b'beat', b'carrot', b'daikon', b'eggplant', b'flower',
    b'green', b'hide', b'ick', b'jack', b'kick', b'lime',
    b'mushrooms', b'nectarine', b'orange', b'peach', b'quant', b'ripen',
    b'strawberry', b'tang', b'up', b'volumne', b'when', b'yellow',
    b'zip', b'The quick brown fox jumps over the lazy dog',
]
HASH_OUTPUTS: dict[str, list[int]] = {
    'one_at_a_time': [
        2297466611, 3902465932, 469785835, 1937308741, 261917617, 3785641677, 1439605128,
        1649152283, 1493851484, 1246520657, 2221159044, 1973511823, 384136800, 214358653,
        2379473940, 4269788650, 2864377005, 2638630052, 427683330, 990491717, 1747111141,
        792127364, 2599214128, 2553037199, 2509838425, 1369346549,
    ],
    'md5': [
        3195025439, 2556848621, 3724893440, 3332385401, 245758794, 2550894432, 121710495,
        3053817768, 1250994555, 1862072655, 2631955953, 2951528551, 1451250070, 2820856945,
        2060845566, 3646985608, 2138080750, 217675895, 2230934345, 1234361223, 3968582726,
        2455685270, 1293568479, 199067604, 2042482093, 2642219166,
    ],
    'crc32': [
        10542, 22009, 14526, 19510, 19432, 10199, 20634,
        9369, 11511, 10362, 7893, 31289, 11313, 9354,
        7621, 30628, 15218, 25967, 2695, 9380, 17300,
        28156, 9192, 20484, 16925, 16719,
    ],
    'fnv1_64': [
        473199127, 4148981457, 3971873300, 3257986707, 1722477987, 2991193800, 4147007314,
        3633179701, 1805162104, 3503289120, 3395702895, 3325073042, 2345265314, 3340346032,
        2722964135, 1173398992, 2815549194, 2562818319, 224996066, 2680194749, 3035305390,
        246890365, 2395624193, 4145193337, 1801941682, 2112060110,
    ],
    'fnv1a_64': [
        1488911807, 2500855813, 1510099634, 1390325195, 3647689787, 3241528582, 1669328060,
        2604311949, 734810122, 1516407546, 560948863, 1767346780, 561034892, 4156330026,
        3716417003, 3475297030, 1518272172, 227211583, 3938128828, 126112909, 3043416448,
        3131561933, 1328739897, 2455664041, 2272238452, 3890508048,
    ],
    'fnv1_32': [
        67176023, 1190179409, 2043204404, 3221866419, 2567703427, 3787535528, 4147287986,
        3500475733, 344481048, 3865235296, 2181839183, 119581266, 510234242, 4248244304,
        1362796839, 103389328, 1449620010, 182962511, 3554262370, 3206747549, 1551306158,
        4127558461, 1889140833, 2774173721, 1180552018, 3922226286,
    ],
    'fnv1a_32': [
        280767167, 2421315013, 3072375666, 855001899, 459261019, 3521085446, 18738364,
        1625305005, 2162232970, 777243802, 3323728671, 132336572, 3654473228, 260679466,
        1169454059, 2698319462, 1062177260, 235516991, 2218399068, 405302637, 1128467232,
        3579622413, 2138539289, 96429129, 2877453236, 76545936,
    ],
    'hsieh': [
        3738850110, 3636226060, 3821074029, 3489929160, 3485772682, 80540287, 1805464076,
        1895033657, 409795758, 979934958, 3634096985, 1284445480, 2265380744, 707972988,
        353823508, 1549198350, 1327930172, 9304163, 4220749037, 2493964934, 2777873870,
        2057831732, 1510213931, 2027828987, 3395453351, 471461527,
    ],
    'murmur': [
        4142305122, 734504955, 3802834688, 4076891445, 387802650, 560515427, 3274673488,
        3150339524, 1527441970, 2728642900, 3613992239, 2938419259, 2321988328, 1145154116,
        4038540960, 2224541613, 264013145, 3995512858, 2400956718, 2346666219, 926327338,
        442757446, 1770805201, 560483147, 3902279934, 818385189,
    ],
    'jenkins': [
        1442444624, 4253821186, 1885058256, 2120131735, 3261968576, 3515188778, 4232909173,
        4288625128, 1812047395, 3689182164, 2502979932, 1214050606, 2415988847, 1494268927,
        1025545760, 3920481083, 4153263658, 3824871822, 3072759809, 798622255, 3065432577,
        1453328165, 2691550971, 3408888387, 2629893356, 314054204,
    ],
}


# libmemcached's weighted-ketama test pool (port 11211, so points are `host-i`).
LIBMEMCACHED_POOL = [("10.0.1.1", 600), ("10.0.1.2", 300), ("10.0.1.3", 200),
                     ("10.0.1.4", 350), ("10.0.1.5", 1000), ("10.0.1.6", 800),
                     ("10.0.1.7", 950), ("10.0.1.8", 100)]


def reference_points(servers: Sequence[tuple[str, int]]) -> list[tuple[int, int]]:
    """(value, server index) of every point, sorted as twemproxy sorts them: a second,
    plain implementation for the tests to check KetamaRing against."""
    total = sum(w for _, w in servers)
    order = sorted(range(len(servers)),
                   key=lambda i: (len(servers[i][0].encode()), servers[i][0].encode()))
    points = []
    for position, index in enumerate(order):
        name, weight = servers[index]
        count = points_per_server(weight, total, len(servers))
        for i in range(count // 4):
            digest = hashlib.md5(f"{name}-{i}".encode()[:272]).digest()
            points += [(v, position, index) for v in struct.unpack("<4I", digest)]
    return [(v, index) for v, _, index in sorted(points)]


def reference_lookup(points: list[tuple[int, int]], h: int) -> int:
    for value, index in points:
        if value >= h:
            return index
    return points[0][1]


def test_libmemcached_hash_vectors() -> None:
    for name, outputs in HASH_OUTPUTS.items():
        h = key_hash(name)
        assert [h(key) for key in HASH_INPUTS] == outputs, name


def test_twemproxy_ketama_point_vectors() -> None:
    # twemproxy's test_all.c: ketama_hash("server1-8", 0) and (.., 3).
    words = struct.unpack("<4I", hashlib.md5(b"server1-8").digest())
    assert (words[0], words[3]) == (3853726576, 2667054752)


def test_libmemcached_weighted_ketama_cases() -> None:
    ring = KetamaRing(LIBMEMCACHED_POOL, "md5")
    assert ring.point_counts == (176, 88, 56, 104, 296, 236, 280, 28)
    assert len(ring) == sum(ring.point_counts) == 1264
    md5 = key_hash("md5")
    points = reference_points(LIBMEMCACHED_POOL)
    for key, key_md5, point, server in LIBMEMCACHED_KETAMA_CASES:
        assert md5(key) == key_md5
        assert min(v for v, _ in points if v >= key_md5) == point
        assert LIBMEMCACHED_POOL[ring.server_for(key)][0] == server, key


def test_wrap_around_to_the_first_point() -> None:
    # libmemcached: "VDEAAAAA hashes to fffcd1b5, after the last continuum point".
    ring = KetamaRing(LIBMEMCACHED_POOL, "md5")
    points = reference_points(LIBMEMCACHED_POOL)
    assert key_hash("md5")(b"VDEAAAAA") == 0xFFFCD1B5 > points[-1][0]
    assert ring.server_for(b"VDEAAAAA") == points[0][1]
    # And with fnv1a_64: a key past the last point, and one at or below the first.
    ring = KetamaRing(LIBMEMCACHED_POOL, "fnv1a_64")
    fnv = key_hash("fnv1a_64")
    keys = (b"wrap:%d" % i for i in range(1_000_000))
    past = next(k for k in keys if fnv(k) > points[-1][0])
    first = next(k for k in keys if fnv(k) <= points[0][0])
    assert ring.server_for(past) == ring.server_for(first) == points[0][1]


@pytest.mark.parametrize("size", [25, 47, 50])
def test_float32_point_count_quirk(size: int) -> None:
    """160 * (1/n) * n / 4 in float32 lands just under 40 for these n: 156 points each."""
    ring = KetamaRing([(f"10.0.0.{i}:11311", 1) for i in range(size)])
    assert ring.point_counts == (156,) * size
    assert len(ring) == 156 * size


def test_point_counts_for_equal_weights() -> None:
    short = [n for n in range(1, 101) if points_per_server(1, n, n) != 160]
    assert short == [25, 47, 50, 55, 61, 71, 94, 100]
    assert {points_per_server(1, n, n) for n in short} == {156}


def test_points_follow_weights() -> None:
    assert points_per_server(1, 6, 3) == 80
    assert points_per_server(2, 6, 3) == 160
    assert points_per_server(3, 6, 3) == 240
    # Tiny shares round down to no points at all (floor of pct * 40 * n, times 4).
    assert points_per_server(1, 1001, 2) == 0


def test_keys_spread_in_proportion_to_weight() -> None:
    weights = (1, 2, 3, 1, 2, 3)
    ring = KetamaRing([(f"127.0.0.1:{11300 + i}", w) for i, w in enumerate(weights)])
    rng = random.Random(5)
    n = 60_000
    counts = Counter(ring.server_for(rng.randbytes(12)) for _ in range(n))
    for index, weight in enumerate(weights):
        share = counts[index] / n
        assert share == pytest.approx(weight / sum(weights), rel=0.25), (index, share)


# Keys with bytes >= 0x80: twemproxy's fnv hashes sign-extend them. These keys are placed
# through nutcracker in tests/compat/test_ketama_nutcracker.py::test_high_bytes_decide_placement.
HIGH_BYTE_FNV1A_64 = {
    b"\x80": 2046684255,
    b"\xff": 2046707310,
    "été".encode(): 3933641815,
    "ключ".encode(): 2846718081,
    "🔑".encode(): 1961733575,
    b"key\xfe\x81": 2524197653,
}


def _unsigned_fnv1a_32bit(key: bytes) -> int:
    h = 0xCBF29CE484222325 & 0xFFFFFFFF
    for b in key:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFF
    return h


def test_fnv1a_64_sign_extends_high_bytes() -> None:
    fnv = key_hash("fnv1a_64")
    for key, expected in HIGH_BYTE_FNV1A_64.items():
        assert fnv(key) == expected, key
        assert _unsigned_fnv1a_32bit(key) != expected, key
    # ASCII keys see no difference.
    assert fnv(b"apple") == _unsigned_fnv1a_32bit(b"apple") == 1488911807


def test_point_name() -> None:
    assert point_name("10.0.1.1", 11211) == "10.0.1.1"
    assert point_name("127.0.0.1", 11311) == "127.0.0.1:11311"
    assert point_name("cache.example.com", 22122) == "cache.example.com:22122"


# Names sharing one point value; twemproxy gives it to the shorter, then bytewise smaller
# name whatever the configuration order (checked against nutcracker in the compat suite).
TIES = [("tie-184", "tie-434", 1310727539), ("z333", "z1267", 4157646814)]


@pytest.mark.parametrize(("winner", "loser", "value"), TIES)
def test_shared_point_goes_to_the_name_sorted_first(winner: str, loser: str, value: int) -> None:
    for order in ((winner, loser), (loser, winner)):
        servers = [(name, 1) for name in order]
        points = reference_points(servers)
        values = [v for v, _ in points]
        at = values.index(value)
        assert values[at + 1] == value, "the names no longer share a point"
        below = values[at - 1]
        md5 = key_hash("md5")
        keys = [k for k in (b"arc:%d" % i for i in range(100_000)) if below < md5(k) <= value]
        assert len(keys) >= 20
        ring = KetamaRing(servers)
        assert {ring.server_for(k) for k in keys} == {order.index(winner)}


def test_one_server_takes_every_key() -> None:
    ring = KetamaRing([("only", 1)], "fnv1a_64")
    assert len(ring) == 160
    assert {ring.server_for(b"k%d" % i) for i in range(100)} == {0}


@settings(max_examples=60, deadline=None)
@given(
    servers=st.lists(st.tuples(st.text(min_size=1, max_size=12), st.integers(1, 5)),
                     min_size=1, max_size=8, unique_by=lambda s: s[0]),
    keys=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=20),
    hash_name=st.sampled_from(["md5", "fnv1a_64", "murmur", "jenkins"]),
)
def test_matches_a_linear_scan(servers: list[tuple[str, int]], keys: list[bytes],
                               hash_name: str) -> None:
    ring = KetamaRing(servers, hash_name)
    points = reference_points(servers)
    assert len(ring) == len(points)
    h = key_hash(hash_name)
    for key in keys:
        expected = 0 if len(servers) == 1 else reference_lookup(points, h(key))
        assert ring.server_for(key) == expected


def test_every_hash_name_is_known() -> None:
    assert set(HASH_NAMES) >= {"md5", "fnv1a_64", "fnv1_64", "fnv1a_32", "fnv1_32", "crc32",
                               "crc32a", "one_at_a_time", "murmur", "jenkins", "hsieh"}
    with pytest.raises(ValueError, match="unknown key hash"):
        key_hash("sha1")


@pytest.mark.parametrize("servers", [
    [],
    [("a", 0)],
    [("a", 1), ("a", 2)],
])
def test_bad_server_lists_are_refused(servers: list[tuple[str, int]]) -> None:
    with pytest.raises(ValueError):
        KetamaRing(servers)


def test_long_point_strings_are_cut_like_twemproxy() -> None:
    """twemproxy formats `name-i` into 273 bytes: past 272 bytes the rest is cut off, so two
    names alike in their first 272 bytes get the very same points (and the tie rule picks)."""
    x, y = "a" * 272 + "x", "a" * 272 + "y"
    for order in ((x, y), (y, x)):
        ring = KetamaRing([(name, 1) for name in order])
        assert len(ring) == 320
        assert {ring.server_for(b"k%d" % i) for i in range(200)} == {order.index(x)}
