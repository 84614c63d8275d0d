"""SWUpdate-style bundles: the .swu stream, the sw-description model and plan, handlers, the install command."""
