"""Reference ground-truth pipelines of refcoco-edit.

``refcoco_edit.pipelines.base`` holds the contract (``GTPipeline``, ``EditRequest``, ``PipelineOutput``) and the
lazy registry; every other module is one self-contained pipeline (or a helper such as
``refcoco_edit.pipelines.masks``) and is imported only when a pipeline from it is built, so importing this
package never pulls in torch or diffusers.
"""
