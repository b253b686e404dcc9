"""The identity-keyed LRU cache of compiled programs."""

from numpyro_hjb.cache import IdentityCache


class Owner:
    pass


def test_found_only_for_the_same_owner_and_key():
    cache = IdentityCache(4)
    a, b = Owner(), Owner()
    cache.put(a, "k", 1)
    assert cache.get(a, "k") == 1
    assert cache.get(a, "other") is None and cache.get(b, "k") is None


def test_the_least_recently_used_entry_is_dropped():
    cache = IdentityCache(2)
    owners = [Owner() for _ in range(3)]
    cache.put(owners[0], (), "first")
    cache.put(owners[1], (), "second")
    assert cache.get(owners[0]) == "first"  # now the most recently used
    cache.put(owners[2], (), "third")
    assert len(cache) == 2
    assert cache.get(owners[1]) is None
    assert cache.get(owners[0]) == "first" and cache.get(owners[2]) == "third"
