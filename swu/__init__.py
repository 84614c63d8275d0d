"""SWUpdate-style bundles: the .swu stream, the sw-description plan, handlers, the install command."""
